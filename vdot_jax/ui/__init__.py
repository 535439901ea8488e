"""``vdot ui``: a web page for the tasks ``vdot generate`` runs (``backend``: no gradio; ``app``: the Gradio page,
the only module of the package that imports gradio)."""

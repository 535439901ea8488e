"""Subcommands of ``vdot``: each module defines ``register(subparsers)`` adding one parser whose
``func(args)`` does the work. Heavy imports happen inside ``func`` so ``vdot --help`` stays fast."""

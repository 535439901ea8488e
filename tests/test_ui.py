"""``vdot ui``: the page served by a real ``vdot ui`` process (toy teacher, 5x32x32), driven through gradio_client
and a real headless browser (Debian's chromium + chromedriver, Selenium)."""

import json
import os
import pty
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# CI (and .ci/run, which installs the ui extra and Debian's chromium) fails instead of skipping
REQUIRED = bool(os.environ.get("CI") or os.environ.get("VDOT_REQUIRE_BROWSER"))
if not REQUIRED:
    pytest.importorskip("gradio_client", reason='the ui extra: pip install -e ".[ui]"')
from conftest import free_port  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from vdot_jax.data.video_io import read_video, write_video  # noqa: E402
from vdot_jax.errors import VdotError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOY = "toy teacher (shipped)"
PROMPT = "a red circle moving left"
CAPTION = "a yellow circle moving up"  # the uploaded clip's


SERVER_LOG: dict = {}  # the server fixture's terminal output: {"path": Path}
CALL_LIMIT = 300  # s for one request or wait; the server's heartbeats keep a stalled request's stream open forever


class TimedClient(Client):
    """``predict`` with a limit: a request stalled in the server fails its test instead of hanging the run."""

    def predict(self, *args, api_name=None, **kw):
        return self.submit(*args, api_name=api_name, **kw).result(timeout=CALL_LIMIT)


def _until(done, what: str):
    deadline = time.time() + CALL_LIMIT
    while not done():
        assert time.time() < deadline, f"gave up after {CALL_LIMIT} s waiting for {what}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "server.log"
    SERVER_LOG["path"] = log
    # on a terminal, as people run it (a tqdm bar there once hid the steps from the page's progress); over two
    # (fake CPU) devices with --mesh, as on a multi-device host: the toy transformer sharded fsdp=2
    master, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_ANALYTICS_ENABLED"}
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    proc = subprocess.Popen([sys.executable, "-m", "vdot_jax.cli", "ui", "--port", str(port), "--max-frames", "9",
                             "--max-file-size", "1mb", "--mesh", "fsdp=2"],
                            stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, cwd=ROOT, env=env)
    os.close(terminal)

    def drain():  # keep the terminal's buffer from filling up
        with open(log, "wb") as f:
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    return
                if not chunk:
                    return
                f.write(chunk)
                f.flush()

    threading.Thread(target=drain, daemon=True).start()
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                client = TimedClient(url, verbose=False)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"vdot ui did not start:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield url, client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)


def _args(task="t2v", prompt=PROMPT, frames=5, height=32, width=32, steps=4, guide=2.0, shift=6.0, seed=0,
          expand="0,0,0.25,0.25", clip=1, box="", video=None, mask=None, refs=None, drawn=None):
    """The /generate endpoint's inputs (/preview's without the model); ``drawn``: an RGBA png painted on the
    first frame, sent as the page's image editor sends its layers."""
    editor = None if drawn is None else {"background": None, "layers": [handle_file(str(drawn))],
                                         "composite": None, "id": None}
    files = [handle_file(str(video)) if video else None, handle_file(str(mask)) if mask else None,
             [handle_file(str(r)) for r in refs or []], editor]
    return [TOY, task, prompt, "", frames, height, width, steps, guide, shift, seed, expand, clip, box, *files]


def _video_path(out) -> str:
    return out["video"] if isinstance(out, dict) else out


def _check_mp4(path, frames=5, size=32) -> np.ndarray:
    """A playable mp4 (H.264, what browsers play) of the asked size."""
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="ffmpeg") as r:
        assert r.get_meta_data()["codec"] == "h264"
    video = read_video(path)
    assert video.shape == (frames, size, size, 3)
    return video


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    from vdot_jax.data.toy_world import ToyWorld
    from vdot_jax.data.video_io import to_uint8

    # a clip of the toy teacher's world (its caption: CAPTION), 5 x 32 x 32
    clip = ToyWorld(frames=5).sample_batch(np.random.default_rng(0), 1, ["t2v"]).video[0]  # [3, T, H, W]
    video = to_uint8(clip.transpose(1, 2, 3, 0))
    write_video(d / "video.mp4", video)
    mask = np.zeros((5, 32, 32, 3), np.uint8)
    mask[:, 8:24, 8:24] = 255
    write_video(d / "mask.mp4", mask)
    write_video(d / "mask_48.mp4", np.zeros((5, 48, 32, 3), np.uint8))
    from PIL import Image

    layer = np.zeros((32, 32, 4), np.uint8)  # a square painted on the first frame (alpha > 0 = painted)
    layer[8:24, 8:24] = (255, 255, 255, 255)
    Image.fromarray(layer).save(d / "drawn.png")
    Image.fromarray(np.zeros((48, 32, 4), np.uint8) + 255).save(d / "drawn_48.png")  # drawn on another canvas
    (d / "corrupt.mp4").write_bytes(b"not a video" * 100)
    (d / "big.mp4").write_bytes(os.urandom(2 * 2**20))  # over the server's --max-file-size 1mb
    return d


def test_text_to_video_returns_a_playable_mp4(server):
    _, client = server
    video, summary, command = client.predict(*_args(seed=3), api_name="/generate")
    frames = _check_mp4(_video_path(video))
    assert frames.std() > 0.05  # not a blank clip (values in [-1, 1])
    assert "generated t2v 1x5x32x32 (4 unipc steps, shift 6, CFG 2)" in summary and summary.endswith("seed 3")
    assert "/tmp" not in summary  # no server path in the page
    assert "vdot generate" in command and "--seed 3" in command and "--task t2v" in command
    assert "--mesh fsdp=2" in command  # the server's mesh, as vdot generate takes it


def test_inpaint_preview_then_generate(server, clips):
    """The preview shows the video greyed where the mask is white, beside the mask; generation keeps the rest."""
    _, client = server
    args = _args(task="inpaint", prompt=CAPTION, video=clips / "video.mp4", mask=clips / "mask.mp4")
    preview = read_video(_video_path(client.predict(*args[1:], api_name="/preview")))
    assert preview.shape == (5, 32, 64, 3)
    video_half, mask_half = preview[:, :, :32], preview[:, :, 32:]
    assert abs(video_half[:, 12:20, 12:20].mean()) < 0.05  # greyed hole (grey 127 is 0)
    assert mask_half[:, 12:20, 12:20].mean() > 0.9 and mask_half[:, :4, :4].mean() < -0.9
    video, _, command = client.predict(*args, api_name="/generate")
    _check_mp4(_video_path(video))
    assert "--src-mask mask.mp4" in command


@pytest.mark.parametrize("how", ["drawn", "box"])
def test_inpaint_with_a_mask_drawn_or_a_box_on_the_first_frame(server, clips, how):
    """A square painted on the first frame, or typed as a box in the video's pixels, is the region regenerated in
    every frame (through vdot prepare's build); the command names the vdot prepare line that makes the files."""
    _, client = server
    extra = dict(drawn=clips / "drawn.png") if how == "drawn" else dict(box="8,8,24,24")
    args = _args(task="inpaint", prompt=CAPTION, video=clips / "video.mp4", **extra)
    preview = read_video(_video_path(client.predict(*args[1:], api_name="/preview")))
    mask = preview[:, :, 32:].mean(-1) > 0
    want = np.zeros((5, 32, 32), bool)
    want[:, 8:24, 8:24] = True
    assert (mask == want).mean() > 0.98, (mask != want).sum()
    assert abs(preview[:, 10:22, 10:22, :].mean()) < 0.05  # greyed where generated
    video, _, command = client.predict(*args, api_name="/generate")
    _check_mp4(_video_path(video))
    assert command.startswith("vdot prepare inpaint") and "--src-mask prep/src_mask.mp4" in command
    assert ("--mask drawn_mask.png" if how == "drawn" else "--box 8,8,24,24") in command, command


def test_every_task_is_listed_and_annotator_tasks_say_what_to_upload(server, clips):
    """Every task of vdot generate --task and vdot prepare is on the page; an annotator task without its finished
    file says why in one line, and with it (a finished control video) it runs."""
    from gradio_client.exceptions import AppError

    from vdot_jax import conditions as C
    from vdot_jax.commands.prepare import PREPARE_TASKS
    from vdot_jax.ui.backend import ANNOTATOR_TASKS, TASK_CHOICES

    assert (set(C.TASKS) | set(PREPARE_TASKS)) - {"plain"} <= set(TASK_CHOICES)  # plain: a v2v control video
    assert {"depth", "pose", "flow", "scribble", "track", "face", "salient"} <= set(ANNOTATOR_TASKS)
    _, client = server
    for task in ("depth", "face"):
        with pytest.raises(AppError) as e:
            client.predict(*_args(task=task)[1:], api_name="/preview")
        want = ("depth needs annotator weights", "--annotator depth=WEIGHTS") if task == "depth" else (
            "face's annotator crops reference images in vdot prepare", "--ref-face-model", "upload it here")
        assert all(w in str(e.value) for w in want), str(e.value)
    preview = read_video(_video_path(client.predict(*_args(task="depth", video=clips / "video.mp4")[1:],
                                                    api_name="/preview")))
    assert preview[:, :, 32:].mean() > 0.95  # a control video: generated everywhere


def test_layout_box_and_grey_are_made_as_vdot_prepare_makes_them(server, clips, tmp_path):
    """The page's layout-from-a-box and gray previews are vdot prepare's files (the same build)."""
    from vdot_jax.cli import main as vdot

    _, client = server
    for task, extra in (("layout", ["--box", "8,8,24,24"]), ("gray", [])):
        page = read_video(_video_path(client.predict(*_args(task=task, video=clips / "video.mp4",
                                                            box=" ".join(extra[1:]))[1:], api_name="/preview")))
        out = tmp_path / task
        assert vdot(["prepare", task, "--src-video", str(clips / "video.mp4"), "--frames", "5", "--height", "32",
                     "--width", "32", "--out", str(out), *extra]) == 0
        np.testing.assert_allclose(page[:, :, :32], read_video(out / "src_video.mp4"), atol=0.05)


def test_model_defaults_fill_the_advanced_settings(server):
    _, client = server
    assert tuple(client.predict(TOY, api_name="/defaults")) == (8, 2.0, 6.0)  # the toy teacher's tuned settings


def test_the_toy_student_of_vdot_demo_is_served_beside_the_teacher(tmp_path, capsys):
    """What vdot demo writes as OUT/student (save_student) is offered with no --model, at the students' settings,
    and sampled with its own weights (a student made of other weights than the teacher's generates other frames)."""
    import jax
    from flax import nnx

    from vdot_jax.cli import main as vdot
    from vdot_jax.demo import load_teacher, save_student
    from vdot_jax.ui.backend import TOY_STUDENT, Server, Settings

    graphdef, params = nnx.split(load_teacher())
    other = jax.tree.map(lambda x: x * 0.5 if x.ndim == 2 else x, params)  # not the teacher's weights
    student = save_student(tmp_path / "demo" / "student", graphdef, other)
    server = Server(out_dir=str(tmp_path / "out"), toy_student=str(student))
    assert server.choices == [TOY, TOY_STUDENT]
    d = server.defaults(TOY_STUDENT)
    assert (d["steps"], d["guide_scale"], d["shift"]) == (4, 1.0, 6.0)  # DemoPlan's student sampling
    loaded = nnx.state(server.pipeline(TOY_STUDENT).transformer)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(other)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    s = Settings(prompt="a red circle moving left", frames=5, height=32, width=32, steps=4, guide_scale=1.0,
                 shift=6.0)
    a, _, _ = server.generate(TOY_STUDENT, s)
    b, _, _ = server.generate(TOY, s)
    assert np.abs(read_video(a) - read_video(b)).mean() > 0.05  # frames in [-1, 1]
    assert vdot(["ui", "--toy-student", str(tmp_path / "nowhere")]) == 2
    assert "is not a student folder vdot demo wrote" in capsys.readouterr().err


@pytest.mark.parametrize("task,generated", [
    # which pixels the model generates (mask white), [frame, row, column] of the 5 x 32 x 32 preview
    ("outpaint", (slice(None), slice(None), np.r_[0:5, 27:32])),  # expand 0,0,0.25,0.25: side borders
    ("first_frame", (slice(1, 5), slice(None), slice(None))),  # frame 0 kept
    ("last_clip", (slice(0, 3), slice(None), slice(None))),  # clip frames 2: the last two kept
])
def test_preview_of_outpaint_and_extension(server, clips, task, generated):
    _, client = server
    args = _args(task=task, video=clips / "video.mp4", clip=2)
    preview = read_video(_video_path(client.predict(*args[1:], api_name="/preview")))
    mask = preview[:, :, 32:].mean(-1) > 0  # the right half: the mask, white = generated
    want = np.zeros((5, 32, 32), bool)
    want[generated] = True
    interior = ~(np.abs(np.diff(want.astype(int), axis=2, prepend=0)).astype(bool))  # away from mp4-blurred edges
    assert (mask == want)[interior].mean() > 0.98
    assert abs(preview[:, :, :32][want & interior].mean()) < 0.1  # generated pixels are grey in the video


def test_two_requests_at_once_both_come_back_in_order(server):
    """Two users at once: the second waits in the queue (shown its place) while the first runs, one at a time."""
    _, client = server
    from gradio_client.utils import Status

    first = client.submit(*_args(seed=11, steps=30), api_name="/generate")
    # the first has joined the queue: the second is submitted behind it, while it runs
    _until(lambda: first.status().code in (Status.IN_QUEUE, Status.PROCESSING, Status.PROGRESS, Status.FINISHED),
           "the first request to join the queue")
    second = client.submit(*_args(seed=12), api_name="/generate")
    waiting = set()

    def first_done():
        st = second.status()
        if st.code == Status.IN_QUEUE and st.rank is not None:
            waiting.add(st.rank)
        return first.done()

    _until(first_done, "the first request")
    outs = [first.result(timeout=120), second.result(timeout=120)]
    assert waiting, "the second request never waited in the queue while the first ran"
    assert [f"--seed {s}" in o[2] for s, o in zip((11, 12), outs)] == [True, True]
    names = [Path(_video_path(o[0])).name for o in outs]
    assert names == sorted(names) and names[0] != names[1], names  # the server numbers results as it runs them
    assert not np.array_equal(read_video(_video_path(outs[0][0])), read_video(_video_path(outs[1][0])))


def test_upload_over_the_size_limit_is_refused_by_the_server(server, clips):
    """--max-file-size is enforced by the server (a browser or client that does not check gets a clear refusal)."""
    import httpx

    url, client = server
    r = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.mp4", (clips / "big.mp4").read_bytes())})
    assert r.status_code == 413 and "maximum allowed size of 1048576 bytes" in r.text, (r.status_code, r.text)
    video, _, _ = client.predict(*_args(), api_name="/generate")  # still serving
    _check_mp4(_video_path(video))


def test_serves_no_file_of_the_server_but_its_own(server):
    """No path reaches the server's disk: its source tree and system files are refused through the file route."""
    import httpx

    url, _ = server
    for path in ("/etc/passwd", str(ROOT / "README.md"), str(ROOT / "vdot_jax" / "ui" / "app.py")):
        r = httpx.get(f"{url}gradio_api/file={path}")
        assert r.status_code in (403, 404) and "root:x:" not in r.text and "import" not in r.text, (path, r.text)


def test_binds_this_machine_only_and_opens_no_public_link(server):
    """Safe by default: without --host the page is not reachable on the machine's other addresses, and without
    --share no gradio.live link is made."""
    url, _ = server
    port = int(url.rsplit(":", 1)[1].strip("/"))
    others = set()
    for host in (socket.gethostname(), socket.getfqdn()):
        try:
            others |= {a[4][0] for a in socket.getaddrinfo(host, None, socket.AF_INET)}
        except OSError:
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the address outgoing traffic would use
        try:
            s.connect(("10.255.255.255", 1))
            others.add(s.getsockname()[0])
        except OSError:
            pass
    others = {a for a in others if not a.startswith("127.")}
    if not others:
        pytest.skip("this machine has no address but loopback")
    for addr in others:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addr, port)) != 0, f"the page answers on {addr}:{port}"
    text = SERVER_LOG["path"].read_text(errors="replace")
    assert "gradio.live" not in text and "Running on local URL:  http://127.0.0.1" in text, text[-2000:]


def test_reference_image_is_added_to_the_task(server, tmp_path):
    from vdot_jax.data.video_io import write_image

    _, client = server
    ref = np.full((20, 12, 3), 255, np.uint8)
    ref[4:16, 2:10] = (230, 30, 30)
    _, summary, command = client.predict(*_args(refs=[write_image(tmp_path / "red.png", ref)]),
                                         api_name="/generate")
    assert "generated r2v 1x5x32x32" in summary and "--ref-images red.png" in command


def test_progress_reports_each_denoising_step(server):
    """The page's progress bar is fed from inside the compiled loop (a callback thread): a client sees steps k/N."""
    _, client = server
    job = client.submit(*_args(steps=40), api_name="/generate")
    seen = set()

    def done():
        for p in job.status().progress_data or []:
            if p.unit == "steps" and p.index is not None:
                seen.add((p.index, p.length))
        return job.done()

    _until(done, "the 40-step request")
    job.result(timeout=CALL_LIMIT)
    assert seen and all(n == 40 and 0 < k <= 40 for k, n in seen), seen


@pytest.mark.parametrize("case,message", [
    ("corrupt", "corrupt.mp4"),
    ("mask_size", "must be the same size"),
    ("drawn_size", "must be the same size"),
    ("box_outside", "is not inside the 32x32 frame"),
    ("box_and_drawn", "not both"),
    ("prompt_too_long", "takes at most"),
    ("annotator", "needs annotator weights"),
    ("frames", "1 + 4k"),
    ("too_many_frames", "more than this server allows"),
    ("empty_field", "must be a finite number"),
    ("vocabulary", "toy vocabulary"),
])
def test_bad_input_gives_its_message_and_the_server_keeps_serving(server, clips, case, message):
    from gradio_client.exceptions import AppError

    _, client = server
    args = {
        "corrupt": dict(task="inpaint", video=clips / "corrupt.mp4", mask=clips / "mask.mp4"),
        "mask_size": dict(task="inpaint", video=clips / "video.mp4", mask=clips / "mask_48.mp4"),
        "drawn_size": dict(task="inpaint", video=clips / "video.mp4", drawn=clips / "drawn_48.png"),
        "box_outside": dict(task="inpaint", video=clips / "video.mp4", box="8,8,40,24"),
        "box_and_drawn": dict(task="inpaint", video=clips / "video.mp4", box="8,8,24,24", drawn=clips / "drawn.png"),
        "prompt_too_long": dict(prompt=" ".join([PROMPT] * 3)),  # the toy encoder reads 8 words
        "annotator": dict(task="pose"),
        "frames": dict(frames=6),
        "too_many_frames": dict(frames=13),
        "empty_field": dict(guide=None),  # a cleared number field
        "vocabulary": dict(prompt="a purple elephant"),
    }[case]
    with pytest.raises(AppError) as e:
        client.predict(*_args(**args), api_name="/generate")
    text = str(e.value)
    assert message in text and "Traceback" not in text and "\n" not in text.strip(), text
    video, _, _ = client.predict(*_args(), api_name="/generate")
    _check_mp4(_video_path(video))


def test_a_non_finite_setting_sent_by_a_script_is_one_sentence(server):
    """JSON has no NaN or inf, so a browser (or gradio_client) cannot send them; a script posting Python's
    Infinity/NaN literals to the API gets Settings' sentence, and the server keeps serving."""
    import httpx

    url, client = server
    for name, bad in (("shift", float("inf")), ("guide", float("nan"))):
        body = json.dumps({"data": _args(**{name: bad})})  # Python writes Infinity / NaN
        r = httpx.post(f"{url}gradio_api/call/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text  # the request is queued (gradio reads Python's JSON literals)
        events = httpx.get(f"{url}gradio_api/call/generate/{r.json()['event_id']}", timeout=60).text
        assert "event: error" in events and "must be a finite number" in events and "Traceback" not in events, events
    video, _, _ = client.predict(*_args(), api_name="/generate")
    _check_mp4(_video_path(video))


@pytest.mark.parametrize("name,value", [("guide_scale", float("inf")), ("shift", float("nan")), ("steps", 2.5)])
def test_settings_refuse_non_finite_and_fractional_numbers(name, value):
    """JSON cannot carry NaN or inf to the page, but Settings is the one check every request passes."""
    from vdot_jax.ui.backend import Settings, UIError

    with pytest.raises(UIError, match="finite" if name != "steps" else "whole number"):
        Settings(**{name: value}).check(max_frames=81)
    Settings().check(max_frames=81)  # the defaults pass


# ----------------------------------------------------------------------------- a real browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if REQUIRED:
            pytest.fail("CI: chromium and chromium-driver are missing (apt-get install -y chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver (apt-get install -y chromium chromium-driver)")
    if REQUIRED:
        from selenium import webdriver
    else:
        webdriver = pytest.importorskip("selenium.webdriver")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _result_video(driver, timeout=120) -> dict:
    """Wait until the result's <video> has loaded its source; -> its src, size and duration as the browser sees."""
    deadline = time.time() + timeout
    js = ("const v = document.querySelector('#result video');"
          "return v ? {src: v.currentSrc, ready: v.readyState, w: v.videoWidth, h: v.videoHeight, "
          "d: v.duration, err: v.error && v.error.code} : null;")
    while time.time() < deadline:
        state = driver.execute_script(js)
        if state and state["ready"] >= 1 and state["w"]:
            return state
        time.sleep(0.25)
    raise AssertionError(f"no playable result video in the page: {driver.execute_script(js)}")


def test_browser_text_to_video_and_inpaint(server, browser, clips, tmp_path):
    """The page in chromium: generate (text-to-video, the defaults), the result <video> plays (the browser decoded
    its size and duration); then upload a video and a mask, pick inpaint, preview, generate again; then paint the
    mask on the first frame instead and preview it (a stroke through the centre, nothing at the top and bottom);
    saves a screenshot (README's docs/ui.png: VDOT_UI_SCREENSHOT=docs/ui.png python -m pytest tests/test_ui.py -k browser)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, _ = server
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 60).until(EC.element_to_be_clickable((By.ID, "generate"))).click()
    first = _result_video(browser)
    assert (first["w"], first["h"]) == (32, 32) and first["d"] > 0 and first["err"] is None, first

    task = browser.find_element(By.CSS_SELECTOR, "#task input")
    task.click()
    task.send_keys(Keys.CONTROL, "a")
    task.send_keys("inpaint", Keys.ENTER)
    prompt = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
    prompt.clear()
    prompt.send_keys(CAPTION)
    browser.find_element(By.CSS_SELECTOR, "#src_video input[type=file]").send_keys(str(clips / "video.mp4"))
    browser.find_element(By.CSS_SELECTOR, "#src_mask input[type=file]").send_keys(str(clips / "mask.mp4"))
    time.sleep(1)  # the uploads finish
    browser.find_element(By.XPATH, "//button[text()='preview inputs']").click()
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "const v = document.querySelector('#preview video'); return v && v.readyState >= 1 && v.videoWidth == 64;"))
    browser.find_element(By.ID, "generate").click()
    deadline = time.time() + 120
    while "--task inpaint" not in browser.find_element(By.ID, "info").text + _command(browser):
        assert time.time() < deadline, "the inpainting request did not come back"
        time.sleep(0.25)
    second = _result_video(browser)
    assert second["src"] != first["src"] and second["w"] == 32, second

    # the mask painted on the first frame instead: clear the mask file, paint a stroke through the canvas' centre
    from selenium.webdriver.common.action_chains import ActionChains

    browser.find_element(By.CSS_SELECTOR, "#src_mask button[aria-label='Clear']").click()
    browser.find_element(By.XPATH, "//button[contains(., 'draw a mask or a box')]").click()
    editor = WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.ID, "editor")))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", editor)
    time.sleep(1)  # the first frame is the canvas' background
    editor.find_element(By.CSS_SELECTOR, "button[aria-label='Brush']").click()
    canvas = editor.find_elements(By.TAG_NAME, "canvas")[-1]
    stroke = ActionChains(browser).move_to_element_with_offset(canvas, -20, 0).click_and_hold()
    for dx in range(-20, 21, 4):
        stroke.move_to_element_with_offset(canvas, dx, 0)
    stroke.release().perform()
    time.sleep(0.5)
    before = browser.execute_script("return document.querySelector('#preview video').currentSrc")
    browser.find_element(By.XPATH, "//button[text()='preview inputs']").click()
    src = WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "const v = document.querySelector('#preview video');"
        "return v && v.currentSrc != arguments[0] && v.readyState >= 1 && v.currentSrc;", before))
    import httpx

    (tmp_path / "drawn.mp4").write_bytes(httpx.get(src).content)
    painted = read_video(tmp_path / "drawn.mp4")[:, :, 32:].mean(-1) > 0  # the preview's mask half
    assert painted[:, 14:18, 14:18].all() and not painted[:, :3].any() and not painted[:, -3:].any(), \
        painted[0].astype(int)
    browser.execute_script("window.scrollTo(0, 0)")
    shot = Path(os.environ.get("VDOT_UI_SCREENSHOT") or tmp_path / "ui.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_ui_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    from vdot_jax.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the ui extra were not installed
    assert main(["ui"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'vdot ui: error: the web page needs gradio: pip install -e ".[ui]"', err


def test_only_the_page_module_imports_gradio():
    """gradio is an extra: a ``import gradio`` anywhere else in the package would break the CLI without it."""
    importers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "vdot_jax").rglob("*.py")
                       if "import gradio" in p.read_text() or "from gradio" in p.read_text())
    assert importers == ["vdot_jax/ui/app.py"], importers


@pytest.mark.parametrize("args,message", [
    (["--model", "nope"], "nope"),
    (["--mesh", "fsdp"], "--mesh fsdp: mesh entry 'fsdp' is not of the form axis=size"),  # vdot generate's parsing
    (["--mesh", "fsdp=3"], "--mesh fsdp=3:"),  # sizes this host cannot lay out
])
def test_ui_refuses_bad_options_in_one_line(tmp_path, capsys, monkeypatch, args, message):
    from vdot_jax.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["ui", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vdot ui: error:") and message in err and "\n" not in err, err


def _command(driver) -> str:
    return driver.execute_script("return document.body.innerText")


def test_model_directory_serves_what_pipeline_generates(tmp_path):
    """--model DIR: the page's settings reach Pipeline.generate unchanged (the same video as calling the loaded
    pipeline directly; a swapped or dropped setting changes it), the command line names them, and a model the server
    was not started with is refused."""
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(ROOT / "tests"))
    from oracles import tiny_vace_pipeline

    from vdot_jax.models.config import WanConfig
    from vdot_jax.ui.backend import Server, Settings

    dit = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=1, in_channels=4, out_channels=4, text_dim=32,
                    freq_dim=32, rope_max_seq_len=64, vace_layers=(0,), vace_in_channels=2 * 4 + 64)
    model = str(tiny_vace_pipeline(tmp_path, dit, ["a", "red", "cat"], latents_mean=[0.0] * 4,
                                   latents_std=[1.0] * 4)[2])
    server = Server([model], out_dir=str(tmp_path / "out"))
    s = Settings(prompt="a red cat", frames=5, height=32, width=48, steps=3, guide_scale=3.0, shift=5.0, seed=7)
    path, summary, line = server.generate(model, s)
    want = server.pipeline(model).generate("a red cat", frames=5, height=32, width=48, steps=3, guide_scale=3.0,
                                         shift=5.0, seed=7, progress=False)
    got = read_video(path)
    np.testing.assert_allclose(got, read_video(want.write(tmp_path / "want.mp4")[0]), atol=1e-6)
    assert f"--model {model} --task t2v" in line and "--guide-scale 3 --shift 5 --seed 7" in line
    assert "(3 unipc steps, shift 5, CFG 3)" in summary
    with pytest.raises(VdotError, match="unknown model"):
        server.generate("/elsewhere", s)
    # a prompt longer than umT5's 512 tokens is one sentence (vdot generate cuts it and warns)
    with pytest.raises(VdotError, match="longer than the text encoder's 512 tokens"):
        server.generate(model, Settings(prompt="a red cat " * 200, frames=5, height=32, width=48))
    # the page's settings start at what the model directory records, and follow a re-recording
    from vdot_jax.cli import main

    assert server.defaults(model) == dict(steps=4, shift=16.0, guide_scale=1.0)  # converted as the student
    assert main(["convert", "--dst", model, "--sampling", "teacher"]) == 0
    assert server.defaults(model) == dict(steps=50, shift=16.0, guide_scale=5.0)

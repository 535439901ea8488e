"""One clear line for the inputs that used to crash or mislead: empty and malformed checkpoint files, a pickle
that would run code, the demo's toy teacher given to generate; a prompt cut to the text length warns once."""

from __future__ import annotations

import json
import pickle
import struct

import pytest

from safety_helpers import checksums, refused


def _st(path, header):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda p: (p / "empty.pt").write_bytes(b"") or p / "empty.pt", "the file is empty"),
    (lambda p: _st(p / "list.safetensors", [1, 2]), "header is not a JSON object"),
    (lambda p: _st(p / "int.safetensors", {"a": 5}), "header entry 'a'"),
    (lambda p: _st(p / "shape.safetensors", {"a": {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]}}),
     "header entry 'a'"),
])
def test_broken_checkpoint_files_are_one_line(tmp_path, capsys, make, needle):
    src = make(tmp_path)
    before = checksums(src)
    refused(capsys, ["convert", "--src", src, "--dst", tmp_path / "out"], str(src), needle)
    assert checksums(src) == before and not (tmp_path / "out").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_pickle_refusal_is_a_whole_sentence_with_the_way_out(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"blocks.0.weight": _Evil()}, f)
    line = refused(capsys, ["convert", "--src", tmp_path / "evil.pth", "--dst", tmp_path / "o"],
                   "would run code", "weights_only=False", "safetensors")
    assert line.endswith("convert that file")  # not cut mid-sentence


def test_toy_teacher_given_to_generate_is_named(tmp_path, capsys):
    from pathlib import Path

    import vdot_jax

    toy = Path(vdot_jax.__file__).parent / "assets" / "toy_teacher"
    refused(capsys, ["generate", "--model", toy, "--prompt", "a", "--frames", "5", "--height", "32", "--width", "32",
                     "--out", tmp_path / "o.mp4"], str(toy), "toy teacher", "--vae")


def test_a_cut_prompt_warns_once(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from vdot_jax.models.text_encoder import PromptTokenizer

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "cat": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "eos_token": "</s>"}))
    pt = PromptTokenizer(tmp_path, 4)
    pt(["cat cat"])
    assert "warning" not in capsys.readouterr().err
    pt(["cat " * 10])
    pt(["cat " * 10])
    err = capsys.readouterr().err
    assert err.count("warning: a prompt is longer than 4 tokens and was cut to 4") == 1

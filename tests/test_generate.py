"""lowbit generate (issue 14): sampling from a float LM checkpoint and from its integer-LSTM model file."""

import pytest

from lowbit.cli import main
from lowbit.errors import ConfigError, DataError
from lowbit.generate import _prompt_tokens, detokenize, generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory, shared_data):
    """A tiny 4-bit character LSTM trained for 50 steps on Tiny Shakespeare, and its integer-LSTM export."""
    if not (shared_data / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip("Tiny Shakespeare not found")
    d = tmp_path_factory.mktemp("lm")
    assert main(["train", "shakespeare-lstm", "--epochs", "1", "--data-dir", str(shared_data), "--out", str(d),
                 "--set", "model.hidden_size=32", "--set", "model.emb_size=16", "--set", "model.bptt=20",
                 "--set", "batch_size=8", "--set", "train_subset=8001", "--set", "test_subset=2000",
                 "--no-progress"]) == 0
    assert main(["export", str(d / "checkpoint.pt"), "-o", str(d / "model.lbt"), "--data-dir", str(shared_data),
                 "--calibration-batches", "2"]) == 0
    return d


@pytest.mark.parametrize("file", ["checkpoint.pt", "model.lbt"])
def test_generation_is_deterministic_for_a_seed(char_lm, file):
    path = char_lm / file
    a = generate(path, "ROMEO:", tokens=40, temperature=0.8, seed=1)
    assert len(a) == 40
    assert generate(path, "ROMEO:", tokens=40, temperature=0.8, seed=1) == a
    assert generate(path, "ROMEO:", tokens=40, temperature=0.8, seed=2) != a
    greedy = generate(path, "ROMEO:", tokens=10, temperature=0)
    assert greedy == generate(path, "ROMEO:", tokens=10, temperature=0, seed=99)  # no randomness at T=0


@pytest.mark.parametrize("file", ["checkpoint.pt", "model.lbt"])
def test_prompt_outside_the_vocabulary_is_a_clear_error(char_lm, file):
    with pytest.raises(DataError, match=r"prompt: 2 characters are not in the model's vocabulary.*'~', 'é'"):
        generate(char_lm / file, "héllo~", tokens=5)
    with pytest.raises(ConfigError, match="prompt is empty"):
        generate(char_lm / file, "", tokens=5)


def test_generate_command(char_lm, capsys):
    assert main(["generate", str(char_lm / "model.lbt"), "--prompt", "To be", "--tokens", "20", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert out == "To be" + generate(char_lm / "model.lbt", "To be", tokens=20, seed=7) + "\n"
    assert main(["generate", str(char_lm / "model.lbt"), "--prompt", "{x}", "--tokens", "3"]) == 2
    assert "not in the model's vocabulary" in capsys.readouterr().err


def test_word_level_tokens_round_trip():
    assert _prompt_tokens("the cat\nsat", "word") == ["the", "cat", "<eos>", "sat"]
    assert detokenize(["the", "cat", "<eos>", "sat", "down"], "word") == "the cat\nsat down"
    assert _prompt_tokens("ab c", "char") == ["a", "b", " ", "c"]

"""Progress on stderr: a redrawn rich bar on a terminal, one plain line per epoch elsewhere."""
import io

from edge_sdfa.progress import EpochProgress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_per_epoch_and_no_carriage_returns():
    out = io.StringIO()
    with EpochProgress("finetune", 3, stream=out) as bar:
        for epoch in (1, 2, 3):
            bar.update(epoch, loss=1.0 / epoch, val=0.5)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert [line.rsplit(" ", 1)[0] for line in lines] == [
        "finetune epoch 1/3 loss 1.000 val 0.500",
        "finetune epoch 2/3 loss 0.500 val 0.500",
        "finetune epoch 3/3 loss 0.333 val 0.500"]
    assert all(line.endswith("s") for line in lines)          # elapsed seconds


def test_a_terminal_gets_a_redrawn_bar():
    out = _Terminal()
    with EpochProgress("pretrain", 2, stream=out) as bar:
        bar.update(1, loss=0.25)
        bar.update(2, loss=0.125)
    text = out.getvalue()
    assert "pretrain" in text and "2/2" in text and "loss 0.125" in text
    assert "\n" not in text.rstrip("\n").split("pretrain")[0]   # nothing printed before the bar


def test_disabled_or_empty_prints_nothing():
    for enabled, total in ((False, 3), (True, 0)):
        out = _Terminal()
        with EpochProgress("x", total, enabled, stream=out) as bar:
            bar.update(1, loss=1.0)
        assert out.getvalue() == ""

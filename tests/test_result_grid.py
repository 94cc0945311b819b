"""ResultGrid: the text-to-video grid and projector embeddings logged to TensorBoard at validation."""
import io
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mvclip.callbacks import ResultGrid
from mvclip.input_spec import InputSpec
from mvclip.lightning_module import VideoTextModule
from mvclip.result_grid import CORRECT, OTHER, Hit, caption_text, frame_strip, top_hits
from mvclip.tokenizer import tokenize

LEFT, RIGHT, GROWS, SHRINKS = ("a red circle moves to the left", "a red circle moves to the right",
                               "a green square grows", "a green square shrinks")
# clip key -> (caption, unit-norm embedding); queries are LEFT = e0, RIGHT = e1, GROWS = e2
CLIPS = {
    "c0": (LEFT, [0.7, 0.71414284, 0.0, 0.0]),
    "c1": (RIGHT, [0.6, 0.8, 0.0, 0.0]),
    "c2": (LEFT, [0.8, 0.0, 0.6, 0.0]),
    "c3": (GROWS, [0.0, 0.0, 1.0, 0.0]),
    "c4": (SHRINKS, [0.96, 0.0, 0.28, 0.0]),
    "c5": (RIGHT, [0.0, 1.0, 0.0, 0.0]),
}
QUERY_EMB = {LEFT: [1.0, 0, 0, 0], RIGHT: [0, 1.0, 0, 0], GROWS: [0, 0, 1.0, 0], SHRINKS: [0, 0, 0, 1.0]}
# each clip is one solid colour (none grey, none a border colour), so its tiles can be found in the logged image
COLOURS = {f"c{i}": (50 + 30 * i, 255 - 30 * i, 100) for i in range(6)}


def _batch(keys):
    video = torch.stack([torch.tensor(COLOURS[k], dtype=torch.float32).div(255).view(1, 3, 1, 1).expand(8, 3, 20, 20)
                         for k in keys])
    captions = [CLIPS[k][0] for k in keys]
    batch = {"video": video, "text": tokenize(captions), "text_video_index": torch.arange(len(keys)), "key": list(keys)}
    outputs = {"video_emb": torch.tensor([CLIPS[k][1] for k in keys]), "text_emb": torch.tensor([QUERY_EMB[c] for c in captions])}
    return outputs, batch


def _trainer(logger, step=7, sanity=False):
    return SimpleNamespace(sanity_checking=sanity, is_global_zero=True, global_step=step, loggers=[logger], logger=logger)


def _run(callback, trainer, batches):
    module = SimpleNamespace(model=SimpleNamespace(input_spec=None))
    callback.on_validation_epoch_start(trainer, module)
    for i, keys in enumerate(batches):
        outputs, batch = _batch(keys)
        callback.on_validation_batch_end(trainer, module, outputs, batch, i)
    callback.on_validation_epoch_end(trainer, module)


def _tiles(image):
    """{(row, column): (clip key, border colour)} of the tiles in a grid image, found by their clips' colours."""
    found = []
    for key, colour in COLOURS.items():
        mask = (image == np.array(colour, dtype=np.uint8)).all(-1)
        ys, xs = np.nonzero(mask)
        # a clip may appear in several rows; each appearance is a separate run of rows
        for top in sorted({y for y in ys if y == 0 or not mask[y - 1].any()}):
            left = int(xs[ys == top].min())
            found.append((top, left, key, tuple(int(v) for v in image[top - 1, left])))
    tops = sorted({t for t, _, _, _ in found})
    out = {}
    for top, left, key, border in found:
        row = tops.index(top)
        column = sorted(lf for t, lf, _, _ in found if t == top).index(left)
        out[row, column] = (key, border)
    return out


def test_grid_marks_the_correct_clips_and_the_projector_gets_every_clip(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    # the first batch has two distinct captions: with three queries it waits for the second batch (the pending path)
    _run(ResultGrid(queries=3, k=3, frames=4, frame_px=16), _trainer(logger), [["c0", "c1", "c2"], ["c3", "c4", "c5"]])
    logdir = Path(logger.log_dir)

    events = EventAccumulator(str(logdir), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert events.Tags()["images"] == ["val/results/t2v"]
    (event,) = events.Images("val/results/t2v")
    assert event.step == 7
    image = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    green, grey = tuple(CORRECT), tuple(OTHER)
    # LEFT: c4 (0.96, shrinks) beats the LEFT clips c2 (0.8) and c0 (0.7); RIGHT: c5 (1.0), c1 (0.8), then c0 (0.714);
    # GROWS: c3 (1.0), c2 (0.6), c4 (0.28)
    assert _tiles(image) == {
        (0, 0): ("c4", grey), (0, 1): ("c2", green), (0, 2): ("c0", green),
        (1, 0): ("c5", green), (1, 1): ("c1", green), (1, 2): ("c0", grey),
        (2, 0): ("c3", green), (2, 1): ("c2", grey), (2, 2): ("c4", grey),
    }
    (text,) = events.Tensors("val/results/t2v/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert f"| {LEFT} | 2 | c4 (0.960) | ✓ c2 (0.800) | ✓ c0 (0.700) |" in table
    assert f"| {GROWS} | 1 | ✓ c3 (1.000) | c2 (0.600) | c4 (0.280) |" in table

    assert "val_results_video" in (logdir / "projector_config.pbtxt").read_text()
    folder = logdir / "00007" / "val_results_video"
    tensors = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
    np.testing.assert_allclose(tensors, [CLIPS[f"c{i}"][1] for i in range(6)], rtol=1e-6)
    metadata = (folder / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "key\tcaption" and metadata[1:] == [f"c{i}\t{CLIPS[f'c{i}'][0]}" for i in range(6)]
    assert Image.open(folder / "sprite.png").size == (3 * 32, 3 * 32)  # 6 sprites of 32 px on a 3x3 sheet


def test_projector_is_capped_and_nothing_is_logged_without_tensorboard_or_in_the_sanity_check(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    _run(ResultGrid(queries=2, k=2, max_embeddings=4, frame_px=8), _trainer(logger), [["c0", "c1", "c2"], ["c3", "c4", "c5"]])
    assert len((Path(logger.log_dir) / "00007" / "val_results_video" / "tensors.tsv").read_text().splitlines()) == 4

    sanity_logger = TensorBoardLogger(tmp_path, name="sanity", version=0)
    _run(ResultGrid(), _trainer(sanity_logger, sanity=True), [["c0", "c1"]])
    assert not (tmp_path / "sanity").exists()  # the writer was never even opened

    csv = CSVLogger(tmp_path, name="csv")
    callback = ResultGrid()
    _run(callback, _trainer(csv), [["c0", "c1"]])
    assert callback._queries == [] and not list(tmp_path.glob("csv/**/*.tfevents*"))


def test_queries_are_one_caption_per_clip_so_paraphrases_do_not_fill_the_grid(tmp_path):
    outputs, batch = _batch(["c0", "c1", "c3"])
    batch["text"] = tokenize([LEFT, "the red circle slides left", RIGHT, GROWS])  # c0 has two captions
    batch["text_video_index"] = torch.tensor([0, 0, 1, 2])
    outputs["text_emb"] = torch.tensor([QUERY_EMB[LEFT], QUERY_EMB[LEFT], QUERY_EMB[RIGHT], QUERY_EMB[GROWS]])
    callback, trainer = ResultGrid(queries=2, k=2), _trainer(TensorBoardLogger(tmp_path, name="run", version=0))
    module = SimpleNamespace(model=SimpleNamespace(input_spec=None))
    callback.on_validation_epoch_start(trainer, module)
    callback.on_validation_batch_end(trainer, module, outputs, batch, 0)
    assert [(r.caption, r.correct_rank, [h.key for h in r.hits]) for r in callback.results()] == [
        (LEFT, 1, ["c0", "c1"]), (RIGHT, 1, ["c1", "c0"])]


def test_ties_keep_validation_order_and_strips_are_made_only_for_the_top():
    made = []
    strip_of = lambda i: made.append(i) or np.zeros((1, 1, 3), np.uint8)  # noqa: E731
    hits = top_hits([], torch.tensor([0.5, 0.75, 0.5, 0.25]), [0, 1, 2, 3], ["a", "b", "c", "d"], [True, False, False, False], strip_of, 2)
    assert [(h.key, h.score) for h in hits] == [("b", 0.75), ("a", 0.5)] and made == [1, 0]
    hits = top_hits(hits, torch.tensor([0.5, 0.875]), [4, 5], ["e", "f"], [True, True], strip_of, 3)
    assert [h.key for h in hits] == ["f", "b", "a"] and made == [1, 0, 1]  # "e" ties "a" but came later; "f" is the batch's clip 1
    assert isinstance(hits[1], Hit) and hits[2].correct and not hits[1].correct


def test_frame_strip_undoes_the_input_normalization_and_captions_decode():
    spec = InputSpec(mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 1.0))
    pixels = torch.tensor([0.2, 0.6, 1.0]).view(1, 3, 1, 1).expand(8, 3, 10, 10)
    normalized = (pixels - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    strip = frame_strip(normalized, frames=4, size=5, spec=spec)
    assert strip.shape == (5, 20, 3) and (strip == np.array([51, 153, 255], np.uint8)).all()
    assert caption_text(tokenize([LEFT])[0]) == LEFT


def test_validation_step_outputs_reach_the_callback_in_a_real_validate(tmp_path, tiny_model_config):
    module = VideoTextModule(model=tiny_model_config, temporal_eval=[])
    captions = [LEFT, RIGHT, GROWS, SHRINKS]
    batch = {"video": torch.rand(4, 4, 3, 64, 64), "text": tokenize(captions), "text_video_index": torch.arange(4),
             "key": ["v0", "v1", "v2", "v3"]}
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    callback = ResultGrid(queries=4, k=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=[callback], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(module, dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    table = events.Tensors("val/results/t2v/text_summary")[0].tensor_proto.string_val[0].decode()
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == [f"| {c}" for c in captions]
    assert len((Path(logger.log_dir) / "00000" / "val_results_video" / "tensors.tsv").read_text().splitlines()) == 4

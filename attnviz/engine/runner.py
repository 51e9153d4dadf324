"""The forward passes: photos in, each photo's top classes and captured maps out, in fixed
batches on the model's device (BatchRunner), or the trunk's Grad-CAM (GradCamRunner)."""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attnviz.api import layer_maps
from attnviz.attention import capture_maps, reads_query, select_layers
from attnviz.attention.capture import capturing, layer_capturer, user_selected
from attnviz.attention.protocol import query_points
from attnviz.engine.gradcam import last_feature_layer, trunk_grad_cam, trunk_mode
from attnviz.engine.options import RunOptions
from attnviz.errors import AttnvizError, UsageError
from attnviz.io import Decoded, InputItem, decode_image
from attnviz.models import LoadedModel
from attnviz.models.outputs import logits_of, not_class_scores, top_classes
from attnviz.render import LayerMaps


def decode_input(item: InputItem, opts: RunOptions, min_side: int) -> Decoded:
    """``item``'s photo, decoded by :func:`decode_image` with ``opts.max_pixels`` and
    ``min_side``; raises AttnvizError for a photo that cannot be decoded or that ``--query``
    falls outside."""
    decoded = decode_image(item.path, opts.max_pixels, min_side)
    check_query(opts.query, decoded.original_hw)
    return decoded


def check_query(query: tuple[float, float] | None, image_hw: tuple[int, int]) -> None:
    """``--query`` must lie inside the photo: a point outside has no attention to show."""
    if query is None:
        return
    x, y = query
    h, w = image_hw
    if not (0 <= x < w and 0 <= y < h):
        raise AttnvizError(f"--query {x:g},{y:g} lies outside this {w}x{h} image")


def forward_threads() -> int:
    """Torch's threads on the CPU: half the cores, the rest decode, render and write.

    Fixed by the machine, never by --workers or --batch-size, so that those cannot change
    the arithmetic (a different thread count may sum in a different order).
    """
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()  # the user chose
    return max(1, _usable_cores() // 2)


def io_workers() -> int:
    """Threads for decoding, rendering and writing when --workers is not given: the usable cores
    that torch's threads leave, at least 1."""
    return max(1, _usable_cores() - forward_threads())


def _usable_cores() -> int:
    # The CPUs this process may run on (a container's or a job's share), not the host's.
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's CPU thread count set to ``count`` inside the block, and restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class ImageResult:
    """What the forward pass gives for one photo: its top-5 classes and each layer's maps."""

    top5: list[dict[str, object]]
    layers: list[LayerMaps]
    gradcam: np.ndarray | None = None  # the trunk's Grad-CAM, when a gradcam panel asks for it
    classes_note: str | None = None  # why top5 is empty: the output is not class scores
    trunk_class: int | None = None  # the trunk's top class, with gradcam (Grad-CAM's target)


def _is_out_of_memory(exc: BaseException) -> bool:
    # CUDA raises its own type; MPS and older builds a RuntimeError with this message.
    text = str(exc)
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in text or "can't allocate memory" in text)  # CPU allocator
    )


class BatchRunner:
    """Forward passes with hooks; on out-of-memory, retries at half the batch down to one.

    With ``forward_batch``, the model always sees batches of exactly that many photos (the
    last one padded with blank images): kernels pick their algorithm, and so the order of
    their sums, by batch shape, so a fixed shape makes every photo's maps the same bytes
    whatever --batch-size and its place in the run. None: the batches as given.
    """

    def __init__(
        self,
        model: LoadedModel,
        layers: list[str],
        with_gradcam: bool = False,
        forward_batch: int | None = None,
        parts: bool = False,
        query: tuple[float, float] | None = None,
    ) -> None:
        self.model, self.layers, self.with_gradcam = model, layers, with_gradcam
        self.capturers = {name: layer_capturer(model.net, name) for name in layers}
        self.forward_batch = forward_batch
        self.parts = parts  # each layer's parts (heads, scales ...) as rows after it
        self.query = query  # (x, y) in the photos' own pixels, for point-read attention
        self.gradcam_layer: str | None = model.spec.gradcam_layer
        self.batch_limit: int | None = None  # lowered after an out-of-memory error
        self.oom_note: str | None = None

    @property
    def map_names(self) -> list[str]:
        """Names of the maps each result holds: its layers', then "gradcam" if computed."""
        return self.layers + (["gradcam"] if self.with_gradcam else [])

    def run(
        self, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[ImageResult]:
        """Results for ``images``; ``sizes`` are the photos' own (h, w) when they were decoded
        smaller (``--query`` is in their pixels), else the arrays' own."""
        sizes = list(sizes) if sizes is not None else [im.shape[:2] for im in images]
        return self._run(list(zip(images, sizes, strict=True)))

    def _run(self, photos: list[tuple[np.ndarray, tuple[int, int]]]) -> list[ImageResult]:
        limit = self.batch_limit or self.forward_batch or len(photos)
        results: list[ImageResult] = []
        for i in range(0, len(photos), limit):
            results += self._run_or_split(photos[i : i + limit])
        return results

    def _run_or_split(self, photos: list[tuple[np.ndarray, tuple[int, int]]]) -> list[ImageResult]:
        try:
            with query_points(self._query_points(photos)):
                return self._forward([image for image, _ in photos])
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if len(photos) == 1:
                raise AttnvizError(
                    "out of memory with a batch of one image; try a smaller --size or --device cpu"
                ) from None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = (len(photos) + 1) // 2
        self.batch_limit = half
        self.oom_note = f"out of memory: retried with smaller batches, down to {half}"
        # The second half goes through _run(): at the size the first half ended up needing.
        return self._run_or_split(photos[:half]) + self._run(photos[half:])

    def _query_points(self, photos: list[tuple[np.ndarray, tuple[int, int]]]) -> Tensor | None:
        """``--query`` as fractions of each photo's width and height, padded like the batch."""
        if self.query is None:
            return None
        for _, hw in photos:
            check_query(self.query, hw)  # frames of a video meet it here
        x, y = self.query
        points = [(x / w, y / h) for _, (h, w) in photos]
        size = max(len(points), self.batch_limit or self.forward_batch or 0)
        points += [(0.5, 0.5)] * (size - len(points))
        return torch.tensor(points, dtype=torch.float32, device=self.model.device)

    def _input(self, images: Sequence[np.ndarray]) -> Tensor:
        """The batch tensor, padded with zeros to the fixed forward shape (if any)."""
        x = self.model.preprocess(images)
        size = self.batch_limit or self.forward_batch
        if size is not None and len(x) < size:
            x = torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])
        return x

    def _forward(self, images: Sequence[np.ndarray]) -> list[ImageResult]:
        x = self._input(images)
        with torch.inference_mode(), capturing(self.capturers) as captured:
            logits = logits_of(self.model(x))
            top5, note = top_classes(logits), not_class_scores(logits)
            missing = [name for name in self.layers if name not in captured]
            if missing:  # a discovered layer whose call did not match its probe's shapes
                raise AttnvizError(f"no map from {', '.join(missing)} in this forward pass")
            maps = {name: layer_maps(name, c, self.parts) for name, c in captured.items()}
        cams: list[np.ndarray | None] = [None] * len(images)
        trunk_classes: list[int | None] = [None] * len(images)
        if self.with_gradcam:
            found, trunk_logits, self.gradcam_layer = trunk_grad_cam(
                self.model.net, x, self.gradcam_layer
            )
            cams = list(found.float().cpu().numpy())
            trunk_classes = [int(c) for c in trunk_logits.argmax(1).tolist()]
        return [
            ImageResult(
                top5[i],
                [row for n in self.layers for row in maps[n][i]],
                cams[i],
                note,
                trunk_classes[i],
            )
            for i in range(len(images))
        ]


class GradCamRunner(BatchRunner):
    """Grad-CAM of the trunk for its predicted class, in place of the attention maps."""

    def __init__(
        self, model: LoadedModel, layer: str | None, forward_batch: int | None = None
    ) -> None:
        super().__init__(model, [], forward_batch=forward_batch)
        self.target = layer or model.spec.gradcam_layer or _last_feature_layer(model)
        self.title = f"Grad-CAM at {layer}" if layer else "Grad-CAM, last conv layer"

    @property
    def map_names(self) -> list[str]:
        return [f"gradcam:{self.target}", "gradcam"]

    def _forward(self, images: Sequence[np.ndarray]) -> list[ImageResult]:
        x = self._input(images)
        cams, logits, self.target = trunk_grad_cam(self.model.net, x, self.target)
        top5 = top_classes(logits[: len(images)])
        note = not_class_scores(logits)
        results = []
        for i, cam in enumerate(cams[: len(images)].float().cpu().numpy()):
            peak = float(cam.max())
            label = top5[i][0]["label"] if top5[i] else "the output"
            layer = LayerMaps(
                f"gradcam:{self.target}",
                cam / peak if peak > 0 else cam,
                cam,
                weights_label=f"for '{label}' / max",
                weights_key="/ max",
                weighted_label=f"for '{label}'",
                weighted_key="Grad-CAM",
                title=self.title,
            )
            results.append(ImageResult(top5[i], [layer], cam, note))
        return results


def _last_feature_layer(model: LoadedModel) -> str:
    """The trunk's last spatial feature map, found now rather than on the first batch: the
    Grad-CAM map is named after it, and that name keys its colour range (--norm)."""
    probe = torch.zeros(1, 3, model.size, model.size, device=model.device)
    try:
        with trunk_mode(model.net):
            return last_feature_layer(model.net, probe)
    except ValueError as exc:
        raise UsageError(f"--method gradcam: {exc}") from None


def make_runner(
    model: LoadedModel,
    method: str,
    layer: str | None,
    with_gradcam: bool = False,
    *,
    parts: bool = False,
    query: tuple[float, float] | None = None,
) -> BatchRunner:
    """The forward passes for ``method``; ``with_gradcam`` adds the trunk's Grad-CAM to each
    result (for a gradcam panel beside the attention maps); ``parts`` and ``query`` as in
    RunOptions."""
    if method == "gradcam":
        if query is not None:
            raise UsageError("--query picks a non-local layer's query point; Grad-CAM has none")
        if layer is not None and layer not in dict(model.net.named_modules()):
            names = [n for n, _ in model.net.named_modules() if n]
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"--method gradcam: the model has no module {layer!r}{hint}")
        return GradCamRunner(model, layer, forward_batch(model.device))
    layers = select_layers(model.net, layer or model.spec.default_layer)
    if query is not None and not reads_query(model.net, layers):
        raise UsageError(
            f"--query picks the point whose attention a layer shows, but "
            f"{', '.join(layers)} {'shows' if len(layers) == 1 else 'show'} no point's "
            "attention (non-local blocks and attention over positions do; see attnviz layers)"
        )
    _check_user_selections(model, layers)
    return BatchRunner(
        model, layers, with_gradcam, forward_batch(model.device), parts=parts, query=query
    )


def _check_user_selections(model: LoadedModel, layers: list[str]) -> None:
    """Run a blank photo through modules that --layer names outside the attention layers: an
    output that is not a one-channel map is then a usage error, not every input failing."""
    chosen = user_selected(model.net, layers)
    if chosen:
        probe = torch.zeros(1, 3, model.size, model.size, device=model.device)
        with torch.inference_mode(), capture_maps(model.net, chosen):
            model.net(probe)


def forward_batch(device: torch.device) -> int:
    """The fixed number of photos per forward pass on ``device`` (see BatchRunner).

    One on a CPU, where batching gains little (about 30 images/s either way for lite0 on
    one thread here) and padding would cost a whole forward per photo short; 16 on a GPU,
    where batches are what makes it fast.
    """
    return 1 if device.type == "cpu" else 16

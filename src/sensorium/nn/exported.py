"""sensorium's own towers on another CPU runtime, opt in: `sn.load(..., backend="openvino" | "onnxruntime")` /
`--backend`.

Many CPU embedding services run their encoders on OpenVINO or ONNX Runtime; this does that with sensorium's modules,
so that the weights, the preprocessing and the API stay sensorium's. A model family names its tower methods
(`compile_methods`, the same ones `compile=True` compiles) and submodules (`export_modules`: PE-AV's audio codec, with
its length free, and its frame encoder); each becomes an `ExportedCall`. Its first call with an
input of a new kind (the shape past the batch dimension, the dtype, the method's other arguments) runs eagerly, then
exports the method for that kind: OpenVINO converts a TorchScript trace with its PyTorch frontend, ONNX Runtime
takes torch.onnx's dynamo export, both with the batch dimension free. The runtime's output on that first input must
match eager's (relative error under 1e-4 in float32, 3e-2 in bfloat16), or the export is not used. Later calls of
any batch size run on the runtime. An export is kept on disk, in ~/.cache/sensorium/exported
($SENSORIUM_EXPORT_CACHE overrides), keyed by the weights file, the runtime's version and sensorium's model code,
so a later process reads it instead of exporting again (B16: 7 s to convert for OpenVINO, 14 s to export to ONNX;
PE-AV's codec ~30 s).

- float32 on both runtimes; bfloat16 on OpenVINO only (its bf16 inference precision; ONNX Runtime's CPU provider
  has no bf16 kernels). CPU only.
- Floating inputs go to the runtime as float32 and are cast back to the dtype eager was given inside the graph
  (lossless); outputs come back in eager's dtype.
- Calls that build no autograd graph run on the runtime (torch.no_grad() is not needed: the loader turns the
  weights' gradients off); a call on an input that requires gradients runs eagerly.
- The runtime holds its own copy of a tower's weights; the torch module keeps its own too (eager serves what was
  not exported, and `model.visual` stays a module).
- A failure to export or run (a missing package is an error at load instead) warns once for that kind of input,
  which then runs eagerly; an input eager rejects raises eager's error, as without a backend.
- `backend="auto"` (the default of `sensorium index` and `sensorium serve`) keeps the runtime only where it is
  measurably faster on this machine: OpenVINO when it is installed (a CPU, float32 or bfloat16, not compiled; else
  torch). A kind of input whose eager call takes under 50 ms stays eager without an export; otherwise, after the
  check, the runtime and eager are timed on the same first input (alternating, the faster of two tries each), and the
  runtime is kept only when it is at least 5 % faster (a tie goes to eager, which holds one copy of the weights
  less). A free dimension (the codec's length) is decided per power of two of its size (the codec on OpenVINO ties
  eager on 2 s of sound and wins by 1.4x on 30 s), all from one export. The choice is kept beside the export on
  disk, keyed by this CPU and the thread count, so a later process neither times nor, when eager won, exports
  again. Which way each went: `backend_choices(model)` (and the service's /healthz).

Speed against eager on the same machine: BENCHMARKS.md (the `backend=` section: `benchmarks/pe_core.py models`,
`benchmarks/ast_tagging.py models`, `benchmarks/pe_av.py run`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from sensorium.nn.linear import plain_weights

BACKENDS = ("torch", "auto", "openvino", "onnxruntime")
INSTALL = {"openvino": "pip install 'sensorium[openvino]' (the openvino package)",
           "onnxruntime": "pip install 'sensorium[onnxruntime]' (onnxruntime, onnx and onnxscript)"}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}  # relative L2 error of the first output against eager's
# backend="auto": an eager call shorter than this stays eager (an export costs seconds; a runtime saves a fraction
# of the call), and the runtime must be this much faster than eager to be kept (it holds its own weights)
WORTH_EXPORTING_S = 0.05
KEEP_IF_FASTER = 0.95

log = logging.getLogger("sensorium.backend")


def cache_folder() -> Path:
    return Path(os.environ.get("SENSORIUM_EXPORT_CACHE") or "~/.cache/sensorium/exported").expanduser()


def check_backend(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raise a clear error for a backend that is unknown, not installed, or cannot run this device or dtype."""
    from sensorium.errors import CapabilityError, InputError

    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend in ("torch", "auto"):  # auto falls back to torch where no runtime can serve (resolve_backend)
        return
    if device.type != "cpu":
        raise CapabilityError(f"backend={backend!r} runs on the CPU; this model is on {device} (use device='cpu', "
                              "or backend='torch')")
    if backend == "onnxruntime" and dtype != torch.float32:
        raise CapabilityError(f"backend='onnxruntime' runs float32 (its CPU provider has no {dtype} kernels); load "
                              "with dtype='float32', or use backend='openvino' for bfloat16")
    if backend == "openvino" and dtype not in (torch.float32, torch.bfloat16):
        raise CapabilityError(f"backend='openvino' runs float32 or bfloat16 here, not {dtype}")
    modules = ("openvino",) if backend == "openvino" else ("onnxruntime", "onnx", "onnxscript")
    for module in modules:
        try:
            __import__(module)
        except ImportError as err:
            raise CapabilityError(f"backend={backend!r} needs the {module} package, which is not installed "
                                  f"({err}); {INSTALL[backend]}") from None


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, compile: bool = False) -> tuple[str, bool]:
    """(the runtime to export to, or "torch"; whether each export is kept only where timed faster than eager).
    "auto" is OpenVINO, timed, where it can run (installed, a CPU, float32 or bfloat16, not compiled), else torch."""
    if backend != "auto":
        return backend, False
    if compile or device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return "torch", False
    if importlib.util.find_spec("openvino") is None:
        return "torch", False
    return "openvino", True


def backend_choices(model: torch.nn.Module) -> dict[str, dict[str, str]]:
    """For each exported method or submodule of `model` called so far: the kinds of input met and what runs them
    (the runtime, eager and why), e.g. {"PE-Core-B16-224.encode_image": {"float32 [3, 224, 224]": "openvino: ..."}}."""
    calls = [v for v in vars(model).values() if isinstance(v, ExportedCall)]
    calls += [part.forward for part in model.modules() if isinstance(vars(part).get("forward"), ExportedCall)]
    return {call.name: report for call in calls if (report := call.report())}


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    """This CPU, for a timed choice kept on disk (another CPU may choose the other way)."""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}|{platform.machine()}|{os.cpu_count()}"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """What an export and a timed choice depend on besides the weights: the model code (models/, nn/), the C
    kernels' included (eager's speed changes with them)."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for folder in ("models", "nn"):
        for path in sorted(p for pattern in ("*.py", "*.c", "*.h") for p in (root / folder).glob(pattern)):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


class _Method(torch.nn.Module):
    """One tower method with its non-tensor arguments fixed, as a module to trace. The model is not a submodule
    (TorchScript would script its properties); its weights enter the trace as constants. Floating outputs are
    float32, which every runtime returns through numpy."""

    def __init__(self, method: Callable, options: tuple, keywords: dict, input_dtype: torch.dtype):
        super().__init__()
        object.__setattr__(self, "method", method)
        self.options, self.keywords, self.input_dtype = options, keywords, input_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.method(x.to(self.input_dtype), *self.options, **self.keywords)
        return out.float() if out.is_floating_point() else out


class ExportedCall:
    """A tower method (or a submodule's forward) on `backend`, exported once per kind of input (see the module's
    docstring). `free_dim` = (dim, multiple): that dimension's size is left free in the export as well (a codec
    over any number of samples in hops), and checked at a second, shorter size before the export is used."""

    def __init__(self, name: str, owner: torch.nn.Module, attribute: str, backend: str, origin: dict,
                 free_dim: tuple[int, int] | None = None, choose: bool = False):
        self.name, self.owner, self.attribute, self.backend, self.free_dim = name, owner, attribute, backend, free_dim
        self.origin = origin  # what identifies the weights and the model (the disk cache's key)
        self.choose = choose  # backend="auto": keep the runtime only where it is timed faster than eager
        self.failures: dict[tuple, str] = {}  # kinds of input that run eagerly because the runtime failed, and why
        # backend="auto", per span of input (see __call__): those eager runs, and those the runtime runs, and why
        self.eager_spans: dict[tuple, str] = {}
        self.chosen: dict[tuple, str] = {}
        self._fresh()

    def _fresh(self) -> None:
        # the class's method, bound: the instance attribute of that name is this call
        self.eager = getattr(type(self.owner), self.attribute).__get__(self.owner)
        self.runners: dict[tuple, tuple[Callable, torch.dtype]] = {}  # kind -> (runner, eager's output dtype)
        self.lock = threading.Lock()  # an OpenVINO infer request serves one call at a time

    # pickle / deepcopy (a model shipped to Ray actors): the runtime's objects stay behind; the copy exports
    # again on its first call, or reads the export from its machine's disk cache
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("eager", "runners", "lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fresh()

    def __call__(self, *args, **kwargs):
        if (not args or not isinstance(args[0], torch.Tensor) or args[0].device.type != "cpu"
                or self._wants_gradients(args[0])):  # (a model moved to a GPU after load: eager runs there)
            return self.eager(*args, **kwargs)
        x, options = args[0], args[1:]
        if any(isinstance(v, torch.Tensor) for v in (*options, *kwargs.values())):
            return self.eager(*args, **kwargs)
        try:
            shape = list(x.shape[1:])
            if self.free_dim is not None and x.ndim > 1:
                shape[self.free_dim[0] % x.ndim - 1] = None  # any size
            kind = (tuple(shape), str(x.dtype), repr(options), repr(sorted(kwargs.items())))
        except Exception:  # noqa: BLE001 -- an argument without a stable repr: nothing to key an export by
            return self.eager(*args, **kwargs)
        # auto decides per span: a kind of input and, for a free dimension, its size's power of two (a codec's
        # runtime can lose on 2 s of sound and win on 30 s); one export serves every span of its kind
        span = (kind, x.shape[self.free_dim[0]].bit_length() if self.free_dim is not None and x.ndim > 1 else 0)
        if span in self.eager_spans:
            return self.eager(*args, **kwargs)
        if kind in self.runners and (not self.choose or span in self.chosen):
            runner, out_dtype = self.runners[kind]
            try:
                with self.lock:
                    return runner(_as_input(x)).to(out_dtype)
            except Exception as err:  # noqa: BLE001 -- eager decides whether the input or the runtime is at fault
                out = self.eager(*args, **kwargs)  # a bad input raises here
                del self.runners[kind]
                self._failed(kind, err)
                return out
        if kind in self.failures or x.shape[0] == 0:
            return self.eager(*args, **kwargs)
        start = time.perf_counter()
        out = self.eager(*args, **kwargs)  # a bad input raises here, as without a backend
        eager_s = time.perf_counter() - start
        if not isinstance(out, torch.Tensor):
            self.failures[kind] = "the method returns no single tensor"
            return out
        decided = None
        if self.choose:
            if eager_s < WORTH_EXPORTING_S:
                self._keep_eager(span, f"eager: {eager_s * 1e3:.0f} ms a call, too short to gain from an export")
                return out
            decided = self._read_choice(span)
            if decided is not None and decided["runtime"] == "eager":
                self._keep_eager(span, decided["why"])
                return out
        try:
            if kind in self.runners:  # exported and checked already, at another size of its free dimension
                runner = self.runners[kind][0]
            else:
                runner, cached = self._export(kind, x, options, kwargs)
                self._check(runner, x, out)
                # a size baked into the export would show at another size (a cached export was checked at two
                # sizes when it was made)
                if self.free_dim is not None and not cached:
                    dim, multiple = self.free_dim
                    size = max(multiple, x.shape[dim] // 2 // multiple * multiple)
                    if size != x.shape[dim]:
                        shorter = x.narrow(dim, 0, size)
                        self._check(runner, shorter, self.eager(shorter, *options, **kwargs))
            if self.choose and decided is None:
                decided = self._race(runner, x, args, kwargs)
                self._write_choice(span, decided)
        except Exception as err:  # noqa: BLE001 -- eager answered this input; the runtime could not
            self.runners.pop(kind, None)
            self._failed(kind, err)
            return out
        self.runners[kind] = runner, out.dtype
        if self.choose:
            if decided["runtime"] == "eager":
                self._keep_eager(span, decided["why"])
                if not any(chosen_kind == kind for chosen_kind, _ in self.chosen):
                    del self.runners[kind]  # no span runs on it: the runner goes, with the runtime's weights
                return out
            self.chosen[span] = decided["why"]
            log.info("%s on %s: %s", self.name, self._shown(span), decided["why"])
        return out

    def _race(self, runner: Callable, x: torch.Tensor, args: tuple, kwargs: dict) -> dict:
        """Time the runtime and eager on the same input, alternating, after each has run it once; the faster of
        two tries each unless the first pair already differs by more than 10 %."""
        def timed(call: Callable) -> float:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start

        runtime_s, eager_s = [], []
        for _ in range(2):
            with self.lock:
                runtime_s.append(timed(lambda: runner(_as_input(x))))
            eager_s.append(timed(lambda: self.eager(*args, **kwargs)))
            if not 0.9 < runtime_s[0] / eager_s[0] < 1.1:
                break
        runtime, eager = min(runtime_s), min(eager_s)
        winner, threads = self.backend if runtime < KEEP_IF_FASTER * eager else "eager", torch.get_num_threads()
        return {"runtime": winner, "runtime_s": runtime, "eager_s": eager, "threads": threads,
                "why": f"{winner}: {self.backend} {runtime:.3g} s a call, eager {eager:.3g} s "
                       f"({eager / runtime:.2f}x; timed on a batch of {x.shape[0]}, {threads} threads)"}

    def _choice_file(self, span: tuple) -> Path | None:
        kind, bucket = span
        folder = self._folder(kind)
        if folder is None:
            return None
        machine = hashlib.sha256(f"{_machine()}|{torch.get_num_threads()}".encode()).hexdigest()[:12]
        return folder / f"choice-{machine}-{bucket}.json"

    def _read_choice(self, span: tuple) -> dict | None:
        path = self._choice_file(span)
        try:
            return json.loads(path.read_text()) if path is not None and path.is_file() else None
        except (OSError, ValueError):  # a half-written or unreadable choice: time again
            return None

    def _write_choice(self, span: tuple, decided: dict) -> None:
        path = self._choice_file(span)
        if path is None or not path.parent.is_dir():
            return
        try:
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(decided))
            os.replace(temporary, path)
        except OSError:  # a read-only cache: the choice is remade by the next process
            pass

    def _keep_eager(self, span: tuple, why: str) -> None:
        self.eager_spans[span] = why
        log.info("%s on %s: %s", self.name, self._shown(span), why)

    @staticmethod
    def _shown(span: tuple) -> str:
        """A span of input for people: its dtype and shape past the batch ("any": free), other arguments, and the
        free size's range where auto told sizes apart."""
        (shape, dtype, options, keywords), bucket = span
        shown = f"{dtype.removeprefix('torch.')} {['any' if size is None else size for size in shape]}"
        shown += "".join(f" {extra}" for extra in (options, keywords) if extra not in ("()", "[]"))
        return shown + (f" (free size {2 ** (bucket - 1)}-{2 ** bucket - 1})" if bucket else "")

    def report(self) -> dict[str, str]:
        """Each kind (auto: span) of input met so far and what runs it."""
        shown = {} if self.choose else {self._shown((kind, 0)): self.backend for kind in self.runners}
        for span, why in (*self.chosen.items(), *self.eager_spans.items()):
            shown[self._shown(span)] = why
        for kind, why in self.failures.items():
            shown[self._shown((kind, 0))] = f"eager: {self.backend} failed ({why})"
        return shown

    def _wants_gradients(self, x: torch.Tensor) -> bool:
        """A call that builds an autograd graph runs eagerly (the runtime has none). A plain call without
        torch.no_grad() builds none (the loader turns the weights' gradients off), so it runs on the runtime."""
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.owner.parameters()))

    def _check(self, runner: Callable, x: torch.Tensor, expected: torch.Tensor) -> None:
        with self.lock:
            got = runner(_as_input(x))
        error = ((got.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()
        allowed = TOLERANCE.get(expected.dtype, 3e-2)
        if tuple(got.shape) != tuple(expected.shape) or not error <= allowed:
            raise RuntimeError(f"its output is {error:.2e} from eager's (allowed {allowed:.0e}), shape "
                               f"{tuple(got.shape)} against {tuple(expected.shape)}")

    def _failed(self, kind: tuple, err: Exception) -> None:
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        self.failures[kind] = f"{type(err).__name__}: {first_line}"
        warnings.warn(f"backend={self.backend!r} failed for {self.name} on inputs {self._shown((kind, 0))} past the "
                      f"batch ({self.failures[kind]}); they run eagerly", RuntimeWarning, stacklevel=3)

    def _key(self, kind: tuple) -> str:
        runtime = importlib.import_module("openvino" if self.backend == "openvino" else "onnxruntime")
        fields = {**self.origin, "method": self.name, "kind": kind, "backend": self.backend,
                  "runtime": getattr(runtime, "__version__", "?"), "torch": torch.__version__, "code": _code_digest()}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def _folder(self, kind: tuple) -> Path | None:
        """This kind's export (and timed choices) in the disk cache; None when the weights file allows no key."""
        return cache_folder() / f"{self.backend}-{self._key(kind)}" if self.origin.get("weights") else None

    def _export(self, kind: tuple, x: torch.Tensor, options: tuple, kwargs: dict) -> tuple[Callable, bool]:
        """(a runner, float32 or integer tensor in, tensor out, for this kind of input; whether it was read from the
        disk cache, when the weights file allows a key, rather than exported now and kept there)."""
        folder = self._folder(kind)
        if folder is not None and (folder / "done").is_file():
            return _open(self.backend, folder, self.origin["dtype"]), True
        # two rows: torch.export fixes a dimension whose example size is 1; a free dimension is traced short
        example = x[:2] if x.shape[0] > 1 else x[:1].expand(2, *x.shape[1:])
        if self.free_dim is not None:
            dim, multiple = self.free_dim
            example = example.narrow(dim, 0, min(example.shape[dim], 8 * multiple))
        example = _as_input(example)
        module = _Method(self.eager, options, kwargs, x.dtype)
        work = Path(tempfile.mkdtemp(prefix="export-", dir=_made(cache_folder()) if folder else None))
        try:
            with plain_weights(self.owner):  # packed linears (the loader's, on a CPU) traced as plain ones
                _write(self.backend, module, example, work, None if self.free_dim is None else self.free_dim[0])
            (work / "done").write_text(json.dumps({"method": self.name, "kind": kind, **self.origin}, default=str))
            if folder is None:
                return _open(self.backend, work, self.origin["dtype"], keep=False), False
            try:
                os.replace(work, folder)
            except OSError:  # another process kept the same export first: use theirs
                shutil.rmtree(work, ignore_errors=True)
            return _open(self.backend, folder, self.origin["dtype"]), False
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _as_input(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    return x.float() if x.is_floating_point() else x


def _write(backend: str, module: torch.nn.Module, example: torch.Tensor, folder: Path, free_dim: int | None) -> None:
    """Export `module` on `example` into `folder` (model.xml/.bin, or model.onnx + its external data), the batch
    dimension and `free_dim` left free (OpenVINO's conversion leaves every dimension free)."""
    from sensorium.nn.linear import use_onednn

    # F.linear instead of oneDNN's op, which neither exporter knows (same numbers to the order of the sums)
    with use_onednn(False), torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's tracer warns at every Python branch on a shape
        example = example.clone()  # not an inference-mode tensor, which the exporters refuse
        if backend == "openvino":
            import openvino as ov

            converted = ov.convert_model(module, example_input=example)
            ov.save_model(converted, str(folder / "model.xml"), compress_to_fp16=False)
        else:
            import logging

            quiet = logging.getLogger("torch.onnx")  # it lists the torchvision ops it skips, at every export
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                free = {0: torch.export.Dim.AUTO}  # AUTO: torch.export infers how the sizes relate (a hop)
                if free_dim is not None:
                    free[free_dim % example.ndim] = torch.export.Dim.AUTO
                program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=(free,), verbose=False)
            finally:
                quiet.setLevel(level)
            program.save(str(folder / "model.onnx"), external_data=True)


def _open(backend: str, folder: Path, dtype_name: str, keep: bool = True) -> Callable:
    """A runner over the export in `folder`; `keep=False` deletes the folder once the runtime holds the model."""
    try:
        if backend == "openvino":
            import openvino as ov

            core = ov.Core()
            precision = "bf16" if dtype_name == "torch.bfloat16" else "f32"
            compiled = core.compile_model(core.read_model(str(folder / "model.xml")), "CPU",
                                          {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            return lambda x: torch.from_numpy(request.infer({0: x.numpy()})[0].copy())
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3
        session = ort.InferenceSession(str(folder / "model.onnx"), session_options,
                                       providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {feed: x.numpy()})[0])
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def export_model(model: torch.nn.Module, backend: str, choose: bool = False) -> bool:
    """Replace each of the model's `compile_methods` (on the instance), and the forward of each submodule its
    `export_modules` names ({path: free_dim or None}), by an ExportedCall on `backend` (`choose`: kept only where
    timed faster than eager, backend="auto"); False when the family names none (nothing is changed)."""
    names = getattr(model, "compile_methods", ())
    modules = getattr(model, "export_modules", {})
    weights = getattr(model, "weights_path", None)
    origin = {"model": getattr(model, "name", type(model).__name__), "class": type(model).__qualname__,
              "dtype": str(getattr(model, "dtype", torch.float32)), "weights": None}
    if weights and Path(weights).is_file():
        stat = Path(weights).stat()
        origin.update(weights=str(Path(weights).resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                      layout=str(getattr(model, "layout", "")))
    for name in names:
        setattr(model, name, ExportedCall(f"{origin['model']}.{name}", model, name, backend, origin, choose=choose))
    for path, free_dim in modules.items():
        part = model.get_submodule(path)
        # an instance attribute: nn.Module.__call__ finds it before the class's forward
        part.forward = ExportedCall(f"{origin['model']}.{path}", part, "forward", backend, origin, free_dim, choose)
    return bool(names) or bool(modules)

"""Process-level helpers the training loop needs but should not be cluttered with.

Random-number state (saved as tensors and plain containers, so a checkpoint loads with
``torch.load(weights_only=True)``), device choice and names, package versions, glibc malloc
tuning, atomic writes, the config flattener, the override-key parser and the SIGINT/SIGTERM
catcher. Nothing here knows about methods or data.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from .errors import ConfigError


# ---------------------------------------------------------------------------- devices
def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA device is available; "
                          "use trainer.device=cpu or trainer.device=auto.")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and core count (for results.json and da-report)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def package_versions() -> dict[str, str]:
    """Versions of python and the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "hydra-core", "omegaconf", "da-train"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed heap memory in the process (Linux; a no-op elsewhere).

    PyTorch's CPU allocator frees each step's activations; by default glibc serves large
    blocks with mmap/munmap and trims the heap top, so the next step page-faults fresh,
    zeroed pages again. Measured with scripts/bench.py on a 2-core CPU this costs 20-25% of a
    DANN step. A fixed 32 MiB mmap threshold (the largest glibc accepts) and a 1 GiB trim
    threshold keep those pages. Returns True when both settings were accepted.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)
                    and libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):
        return False


# ---------------------------------------------------------------------------- randomness
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA generator states as tensors and plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- files
def _fsync_replace(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk, then rename it over ``path`` (atomic on POSIX)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def compact_json(obj: dict) -> str:
    """One top-level key per line, each value on its line (a confusion matrix stays one
    line instead of a hundred): compact, yet easy to read and to diff."""
    lines = [f"  {json.dumps(str(k))}: {json.dumps(v, default=str)}" for k, v in obj.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (temp file, fsync, rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(compact_json(obj))
    _fsync_replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temp file, fsync, rename: a kill never leaves a broken checkpoint."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    _fsync_replace(tmp, path)


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a da-train checkpoint with ``weights_only=True``: tensors and plain containers
    only, so a checkpoint from elsewhere cannot run code. Anything else is one clear error."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConfigError(
            f"{path} cannot be loaded as a da-train checkpoint: it is unreadable, cut short, or "
            "holds Python objects other than tensors and plain containers (an old da-train "
            "checkpoint, or a file from another program; loading those could run code, so "
            f"da-train refuses). Start the run afresh instead of resuming it. ({err})".replace(
                "\n", " ")[:1200]) from err
    if not isinstance(state, dict) or not {"method", "step", "config"} <= state.keys():
        raise ConfigError(f"{path} is not a da-train checkpoint (it lacks the method, step and "
                          "config entries). Start the run afresh instead of resuming it.")
    return state


# ---------------------------------------------------------------------------- configs
def flatten(node, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` for a dict or an OmegaConf node (resolved)."""
    if not isinstance(node, dict):
        node = OmegaConf.to_container(node, resolve=True)
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------------------- signals
class SignalCatcher:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step.

    The loop then saves a checkpoint and stops cleanly; a second signal exits at once.
    Only installed in the main thread (Python's rule for signal handlers).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    @property
    def name(self) -> str | None:
        """The caught signal's name (``SIGTERM``), or None."""
        return signal.Signals(self.signum).name if self.signum else None

    def _handle(self, signum, frame):
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

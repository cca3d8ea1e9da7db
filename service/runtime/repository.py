"""The model repository: finds models on disk, loads and unloads them, and tracks each version's state.

Layouts (both may be mixed in one directory):
  DIR/<model>/<version>/model.onnx   Triton's layout; DIR/<model>/config.json or config.pbtxt is optional
  DIR/<model>.onnx                   a single version "1" with the default config
Other files (scripts, READMEs, data) are ignored; so are entries whose names start with "." or "_".

Scanning is per model: a folder that cannot be read, a version folder that is no ASCII decimal
number, a name the protocol cannot carry, or a config that is invalid, names another model or
is given twice (config.json and config.pbtxt) makes that model UNAVAILABLE with the reason (in the
index, on its readiness and on a load request), never the server or the other models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from pathlib import Path
from typing import NamedTuple

from se_onnx.errors import SeOnnxError
from service.config import MODEL_CONFIG_FILE, ModelConfig, ServerSettings
from service.errors import ServiceError, quoted
from service.runtime.model import LoadCancelled, ServedModel
from service.runtime.recorder import Recorder
from service.runtime.triton_config import PBTXT_FILE, read_pbtxt

log = logging.getLogger("service.repository")

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"

# Triton's versions are int64: ASCII digits only ("¹" and "١" pass str.isdigit() but are no version).
_VERSION = re.compile(r"[0-9]+")
_MAX_VERSION = 2**63 - 1
# Names travel in URLs, JSON and logs: no control characters, and valid UTF-8 (os.fsdecode
# turns other bytes into lone surrogates, which no response can encode).
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def is_version(name: str) -> bool:
    """Whether `name` is a version as the repository and the protocol spell them: ASCII decimal digits."""
    return _VERSION.fullmatch(name) is not None


def _looks_like_version(name: str) -> bool:
    """A folder meant as a version, ASCII or not ("¹", "٣"): the model reports it instead of ignoring it."""
    return name.isdigit()


# What clients are told about a model that failed to load, by a phrase of the full reason; the
# full reason (paths, ONNX Runtime's words) goes only to the log and the authenticated index.
_FAILURE_CLASSES = (
    ("--model-load-timeout", "it took longer to load than the server allows"),
    ("was stopped", "its load was stopped"),
    ("version folder", "its version folders are invalid"),
    ("the model name", "its name is invalid"),
    ("config names the model", "its config names another model"),
    ("both config.json and config.pbtxt", "it has both config.json and config.pbtxt"),
    ("invalid model config", "its config is invalid"),
    ("config contradicts the model", "its config contradicts the model"),
    ("cannot read model config", "its config file cannot be read"),
    ("version policy selects none", "its version policy selects no version"),
    ("no such model file", "the model file is missing"),
    ("escapes", "its external data escapes the model's folder"),
    ("absolute path not allowed for external data", "its external data escapes the model's folder"),
    ("external data", "its external data cannot be read"),
    ("size to read", "its external data is shorter than its tensors"),
    ("protobuf", "the file is not a valid ONNX model"),
    ("not a valid onnx model", "the file is not a valid ONNX model"),
    ("the protocol cannot carry", "it has a tensor type the protocol cannot carry"),
    ("max_batch_size needs", "max_batch_size needs a dynamic first dimension"),
    ("provider", "its execution provider is not usable"),
    ("memory", "not enough memory"),
    ("directory cannot be read", "its folder cannot be read"),
    ("cannot read the labels", "its labels.txt cannot be read"),
)


def failure_class(reason: str) -> str:
    """The short class of a load failure's full reason, e.g. "the file is not a valid ONNX model"."""
    lowered = reason.lower()
    return next((short for phrase, short in _FAILURE_CLASSES if phrase in lowered), "ONNX Runtime cannot load it")


class VersionState(NamedTuple):
    state: str
    reason: str = ""  # the full reason, for the log and the repository index

    @property
    def summary(self) -> str:
        """What any client may see: "unloaded", or the class of a failure without paths."""
        return self.reason if self.reason in ("", "unloaded", "not loaded") else failure_class(self.reason)


class ModelRepository:
    def __init__(self, config: ServerSettings, recorder: Recorder):
        self.root = Path(config.model_repository)
        self._config = config
        self._recorder = recorder
        self._served: dict[str, dict[str, ServedModel]] = {}
        # name → version → its state; version "" holds a model-level failure (bad config).
        self._states: dict[str, dict[str, VersionState]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # name → the flag of the version loading now; an unload or `close` sets it to stop the load.
        self._loading: dict[str, threading.Event] = {}
        self._stopping = False  # set by `stop_loads`: later loads stop at their first step too

    def discover(self) -> dict[str, Path]:
        """Model name → its directory (Triton layout) or .onnx file, as the disk has them now. A name
        the protocol cannot carry is listed escaped (`load` then refuses it with the reason)."""
        if not self.root.is_dir():
            return {}
        found: dict[str, Path] = {}
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith((".", "_")):
                continue
            name = _shown_name(entry.name)
            if entry.is_dir() and _is_model_folder(entry):
                found[name] = entry
            elif entry.is_file() and entry.suffix == ".onnx":
                found.setdefault(_shown_name(entry.stem), entry)  # a directory of the same name wins
        return found

    @staticmethod
    def _versions(source: Path, override: str | None) -> tuple[ModelConfig, dict[str, Path]]:
        """The model's config and its selected versions' files; SeOnnxError with the reason for a
        bad name, config, version folder or unreadable folder."""
        stem = source.stem if source.is_file() else source.name
        if _BAD_NAME.search(stem):
            raise SeOnnxError(
                f"{_shown_name(stem)}: the model name holds control characters or bytes that are not UTF-8; rename it"
            )
        if override is not None:
            config = ModelConfig.parse(override, f"{source.name}: load request config")
        elif source.is_dir():
            config = _read_config(source, stem)
        else:
            config = ModelConfig()
        if config.name is not None and config.name != stem:
            raise SeOnnxError(
                f"{source}: invalid model config: the config names the model {config.name!r}, its folder "
                f"{stem!r}; a model's name is its folder's"
            )
        if source.is_file():
            return config, {"1": source}
        try:
            folders = {child.name: child for child in source.iterdir() if child.is_dir()}
        except OSError as error:
            raise SeOnnxError(f"{source}: directory cannot be read ({error.strerror})") from None
        numbers: dict[int, Path] = {}
        for folder_name, folder in sorted(folders.items()):
            if not _looks_like_version(folder_name):
                continue  # other folders (data, notes) are no versions, as in Triton
            if not is_version(folder_name) or int(folder_name) > _MAX_VERSION:
                raise SeOnnxError(
                    f"{source}: version folder {_shown_name(folder_name)!r} is not a version "
                    f"(an ASCII decimal number up to {_MAX_VERSION})"
                )
            if int(folder_name) in numbers:
                raise SeOnnxError(
                    f"{source}: version folders {numbers[int(folder_name)].name!r} and {folder_name!r} "
                    "are the same version"
                )
            numbers[int(folder_name)] = folder
        chosen = config.version_policy.select(list(numbers))
        if not chosen:
            raise SeOnnxError(f"{source}: the version policy selects none of versions {sorted(numbers)}")
        return config, {str(number): numbers[number] / config.model_filename for number in chosen}

    async def load_all(self) -> None:
        for name in self.discover():
            with contextlib.suppress(ServiceError):  # logged by `load`; the other models still load
                await self.load(name)

    async def load(self, name: str, config_override: str | None = None) -> None:
        """(Re)load every selected version of `name`; the old versions finish their requests first."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            source = self.discover().get(name)
            if source is None:
                raise ServiceError(404, f"no model {quoted(name)} in the repository {self.root}")
            try:
                config, paths = self._versions(source, config_override)
                config.check_server(self._config, str(source))
            except SeOnnxError as error:
                log.error("model not loaded", extra={"model": name, "reason": str(error)})
                if name in self._served:
                    raise ServiceError(
                        400, f"failed to reload {name!r}, the loaded versions keep serving: {error}"
                    ) from None
                self._states[name] = {"": VersionState(UNAVAILABLE, str(error))}
                raise ServiceError(400, f"failed to load {name!r}: {error}") from None
            states = {version: VersionState(LOADING) for version in paths}
            self._states[name] = states
            loaded: dict[str, ServedModel] = {}
            for version, path in paths.items():
                try:
                    if not path.is_file():
                        raise SeOnnxError(f"{path}: no such model file")
                    model = await self._build(name, version, path, config)
                except LoadCancelled as error:
                    states[version] = VersionState(UNAVAILABLE, str(error))
                    break  # an unload or the shutdown is waiting: load no further version
                except SeOnnxError as error:
                    log.error("model not loaded", extra={"model": name, "version": version, "reason": str(error)})
                    states[version] = VersionState(UNAVAILABLE, str(error))
                    continue
                except Exception as error:  # anything else about one model must not stop the others
                    log.exception("model failed to load", extra={"model": name, "version": version})
                    states[version] = VersionState(UNAVAILABLE, f"{type(error).__name__}: {error}")
                    continue
                model.start()
                loaded[version] = model
                states[version] = VersionState(READY)
            for version, state in states.items():
                if state.state == LOADING:  # after a stopped load, the versions not reached
                    states[version] = VersionState(UNAVAILABLE, "not loaded")
            failed = [reason for state, reason in states.values() if state == UNAVAILABLE]
            previous = self._served.get(name, {})
            if not loaded and previous:
                # A reload that loads nothing keeps the running versions serving, as Triton does.
                self._states[name] = {version: VersionState(READY) for version in previous}
                raise ServiceError(
                    400, f"failed to reload {name!r}, the loaded versions keep serving: {'; '.join(failed)}"
                )
            self._served.pop(name, None)
            if loaded:
                self._served[name] = loaded
            await asyncio.gather(*(model.close() for model in previous.values()))
            if failed:
                raise ServiceError(400, f"failed to load {name!r}: {'; '.join(failed)}")

    async def _build(self, name: str, version: str, path: Path, config: ModelConfig) -> ServedModel:
        """The model version, built in a thread within --model-load-timeout; past it the build is
        told to stop (it frees what it made at its next step) and this raises SeOnnxError."""
        cancelled = threading.Event()
        if self._stopping:
            cancelled.set()
        self._loading[name] = cancelled
        recorder = self._recorder.for_model(name, version)
        build = asyncio.to_thread(ServedModel, name, version, path, config, self._config, recorder, cancelled)
        budget = self._config.model_load_timeout or None
        try:
            return await asyncio.wait_for(build, budget)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise SeOnnxError(
                f"{path}: loading took longer than the server's --model-load-timeout ({budget:g} s)"
            ) from None
        finally:
            cancelled.set()  # a no-op once built; otherwise the thread stops at its next step
            self._loading.pop(name, None)

    async def unload(self, name: str) -> None:
        """Stop routing requests to `name`, let those in flight finish, then free it; a load under
        way is stopped at its next step instead of being waited for."""
        if name in self._loading:
            self._loading[name].set()
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name not in self._served and name not in self._states and name not in self.discover():
                raise ServiceError(404, f"unknown model {quoted(name)}")
            models = self._served.pop(name, {})
            self._states[name] = {version: VersionState(UNLOADING) for version in models}
            await asyncio.gather(*(model.close() for model in models.values()))
            self._states[name] = {version: VersionState(UNAVAILABLE, "unloaded") for version in models} or {
                "": VersionState(UNAVAILABLE, "unloaded")
            }

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The ready model version (the newest when `version` is None): 404 unknown, 503 not ready."""
        versions = self._served.get(name)
        known = name in self._states
        if version is not None and not is_version(version):
            raise ServiceError(404, f"unknown version {quoted(version)} of model {quoted(name)}")
        if versions and (version is None or version in versions):
            return versions[version or max(versions, key=int)]
        if version is not None and known and version in self._states[name]:
            state = self._states[name][version]
            summary = f": {state.summary}" if state.summary else ""
            raise ServiceError(503, f"model {quoted(name)} version {version} is not ready ({state.state}{summary})")
        if version is None and known:
            summaries = "; ".join(
                dict.fromkeys(state.summary for state in self._states[name].values() if state.summary)
            )
            raise ServiceError(503, f"model {quoted(name)} is not ready{': ' + summaries if summaries else ''}")
        if version is not None and (versions or known):
            raise ServiceError(404, f"unknown version {version} of model {quoted(name)}")
        raise ServiceError(404, f"unknown model {quoted(name)}")

    def loaded(self) -> list[ServedModel]:
        return [versions[v] for _, versions in sorted(self._served.items()) for v in sorted(versions, key=int)]

    def versions(self, name: str) -> list[str]:
        return sorted(self._served.get(name, {}), key=int)

    def index(self, ready_only: bool = False) -> list[dict]:
        rows = []
        for name in sorted(set(self.discover()) | set(self._states)):
            states = self._states.get(name) or {"": VersionState(UNAVAILABLE, "not loaded")}
            for version, (state, reason) in sorted(states.items(), key=lambda item: int(item[0] or 0)):
                if not ready_only or state == READY:
                    rows.append({"name": name, "version": version, "state": state, "reason": reason})
        return rows

    def stop_loads(self) -> None:
        """Tell every load under way, and any later one, to stop at its next step (the server is stopping)."""
        self._stopping = True
        for cancelled in self._loading.values():
            cancelled.set()

    async def close(self) -> None:
        self.stop_loads()
        served, self._served = self._served, {}
        await asyncio.gather(*(model.close() for versions in served.values() for model in versions.values()))


def _read_config(folder: Path, name: str) -> ModelConfig:
    """The model folder's config.json or config.pbtxt (the defaults without either); both is an error."""
    json_file, pbtxt_file = folder / MODEL_CONFIG_FILE, folder / PBTXT_FILE
    if pbtxt_file.is_file() and json_file.is_file():
        raise SeOnnxError(
            f"{folder}: invalid model config: both {MODEL_CONFIG_FILE} and {PBTXT_FILE}; keep {PBTXT_FILE} for "
            f"Triton's fields or {MODEL_CONFIG_FILE} for se-onnx's own (provider, gpu_mem_limit, "
            "session_per_instance)"
        )
    if pbtxt_file.is_file():
        return read_pbtxt(pbtxt_file, name)
    return ModelConfig.read(json_file)


def _shown_name(name: str) -> str:
    """`name` as responses and logs can carry it: undecodable bytes and control characters escaped."""
    if not _BAD_NAME.search(name):
        return name
    return "".join(ascii(char)[1:-1] if _BAD_NAME.match(char) else char for char in name)


def _is_model_folder(folder: Path) -> bool:
    """Whether `folder` holds a version folder; an unreadable folder counts, so that its model
    reports the error instead of vanishing."""
    try:
        return any(_looks_like_version(child.name) and child.is_dir() for child in folder.iterdir())
    except OSError:
        return True

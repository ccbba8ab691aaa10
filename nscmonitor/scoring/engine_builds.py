"""Build on arrival, the daemon's side: a background engine build for a served model that
has no engine for this machine."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from nscmonitor.config import Settings

log = logging.getLogger(__name__)


class DaemonEngineBuilds:
    """The daemon's side of build on arrival: it starts a background build (lower priority,
    ``engines.autobuild``) when the served model has no engine for this machine, reaps it,
    and tells the model slot when a new engine has passed its gate so it can swap between
    batches. A preference for a backend that needs no build (``engine = "ort-cpu"``) turns
    building off."""

    #: a build that failed for the machine (a full disk, no permission) is tried again after
    #: this long, then after twice as long each time, up to ``RETRY_MAX_S``: a daemon left
    #: running for weeks gets its engine back once the disk has been cleared, without
    #: rebuilding every few seconds while it is still full
    RETRY_FIRST_S = 3600.0
    RETRY_MAX_S = 86400.0
    #: a build still running after this long is taken to hang (a ResNet50's int8 ladder takes
    #: about 10 minutes on 2 cores, a TensorRT build minutes): it is stopped and, like a build
    #: that died, tried again at the next start, instead of saying "building" for weeks
    BUILD_LIMIT_S = 4 * 3600.0

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        from nscmonitor.engines.autobuild import wants_build

        self.enabled = wants_build(settings.engine)
        self.threads = settings.threads
        self._clock = clock
        self._procs: dict[Path, object] = {}
        #: builds that ended without recording an outcome (killed, out of memory, a runtime crash)
        #: or could not start, with the fingerprint they had: retried only when it changes, not
        #: at every heartbeat for weeks; or that failed for the machine, retried after a wait too
        self._gave_up: dict[Path, object] = {}
        self._retry_at: dict[Path, float] = {}
        self._wait_s: dict[Path, float] = {}
        self._started_at: dict[Path, float] = {}

    def ensure(self, model_path: Path) -> None:
        from nscmonitor.engines import autobuild

        if not self.enabled:
            return
        for path, proc in list(self._procs.items()):  # reap finished builds, of this model or an earlier one
            if proc.poll() is None and self._clock() - self._started_at.get(path, self._clock()) > self.BUILD_LIMIT_S:
                autobuild.stop_build(proc, grace_s=10)
                del self._procs[path]
                self._give_up(path, f"the build was still running after {self.BUILD_LIMIT_S / 3600:.0f} h and was "
                                    f"stopped; see {autobuild.log_path(path)}")
                continue
            if proc.poll() is not None:
                del self._procs[path]
                if autobuild.needed(path)[0] == "build":
                    st = autobuild.read_status(path)
                    if st is not None and st.transient:
                        self._retry_later(path, st.reason or "")
                    else:
                        self._give_up(path, f"the build process ended (exit code {proc.returncode}) without "
                                            f"recording an outcome; see {autobuild.log_path(path)}")
                else:
                    self._wait_s.pop(path, None)
        if model_path in self._procs:
            return
        if model_path in self._gave_up and self._gave_up[model_path] == autobuild.fingerprint(model_path) \
                and self._clock() < self._retry_at.get(model_path, float("inf")):
            return
        try:
            started = autobuild.start(model_path, threads=self.threads)
        except Exception as exc:  # an engine is an optimisation: whatever goes wrong, fp32 keeps serving
            self._give_up(model_path, f"cannot start an engine build: {exc}")
            return
        if started is not None:
            self._procs[model_path] = started
            self._started_at[model_path] = self._clock()

    def close(self, grace_s: float = 2.0) -> None:
        """At daemon stop. A build that has just recorded its outcome gets a moment to exit;
        one still building is stopped rather than left behind the daemon (a service manager
        stopping the daemon would kill it anyway). With no outcome recorded, the next start
        builds again, so nothing is lost but the build's time."""
        for path, proc in list(self._procs.items()):
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.info("%s: stopping the engine build still running; the next daemon start builds again", path)
                from nscmonitor.engines.autobuild import stop_build

                stop_build(proc, grace_s=10)
            del self._procs[path]

    def _retry_later(self, model_path: Path, reason: str) -> None:
        from nscmonitor.engines import autobuild

        wait = min(self._wait_s.get(model_path, self.RETRY_FIRST_S / 2) * 2, self.RETRY_MAX_S)
        self._wait_s[model_path] = wait
        log.warning("%s: the engine build failed for this machine, not the model (%s); fp32 keeps serving and the "
                    "build is tried again in %.0f min", model_path, reason, wait / 60)
        try:
            self._gave_up[model_path] = autobuild.fingerprint(model_path)
        except OSError as exc:
            log.warning("%s: cannot fingerprint the model: %s", model_path, exc)
            return
        self._retry_at[model_path] = self._clock() + wait

    def _give_up(self, model_path: Path, reason: str) -> None:
        from nscmonitor.engines import autobuild

        log.warning("%s: %s; fp32 keeps serving, and the build is retried when the model, its calibration set or "
                    "the runtimes change, or at the next daemon start", model_path, reason)
        self._retry_at.pop(model_path, None)
        try:
            self._gave_up[model_path] = autobuild.fingerprint(model_path)
        except OSError as exc:
            log.warning("%s: cannot fingerprint the model: %s", model_path, exc)

    def token(self, model_path: Path) -> str | None:
        from nscmonitor.engines.autobuild import token

        return token(model_path) if self.enabled else None

    def summary(self, model_path: Path, version: str) -> dict:
        from nscmonitor.engines.autobuild import summary

        if not self.enabled:
            return {"state": "off", "message": "engine builds are off (engine preference set in the configuration)"}
        info = summary(model_path, version)
        proc = self._procs.get(model_path)
        if info["state"] in ("none", "interrupted") and proc is not None and proc.poll() is None:
            # the build just started and has not written its record yet
            info = {"state": "building", "message": f"building an engine for {version} in the background; "
                                                    "scoring goes on with the engine in use"}
        return info

"""What the dashboard writes: promote, roll back and retrain (the registry), label wells, and
requeue quarantined images. The dashboard otherwise only reads the store; these are the
exceptions a scientist expects, and each goes through the same function as its command
(``nscmonitor models``, ``retrain-now``, ``labels``, ``requeue``) on its own writable
connection. Qt-free: the panels get them as plain callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nscmonitor.config import Settings


@dataclass
class ModelAction:
    label: str
    missing: str  # tooltip while ``run`` is None
    run: Callable[[str | None], str] | None = None


def registry_actions(settings: Settings) -> dict[str, ModelAction]:
    """The actions wired to the registry of ``settings`` (database URL, models dir); rolling
    back the well forecast only where one is configured."""
    import os
    import subprocess
    import sys

    from nscmonitor.registry.registry import Registry
    from nscmonitor.store.db import open_engine

    def registry() -> Registry:
        return Registry(settings.models_dir, open_engine(settings.database_url))

    def promote(version: str | None) -> str:
        if not version:
            raise ValueError("select the model version to promote in the table first")
        info = registry().promote(version, reason="promoted from the dashboard")
        return f"{info.version} is now active; the daemon switches to it between batches."

    def rollback(_version: str | None) -> str:
        info = registry().rollback()
        return f"rolled back: {info.version} is active again; the daemon switches between batches."

    def retrain(_version: str | None) -> str:
        cmd = [sys.executable, "-m", "nscmonitor"]
        if settings.source is not None:
            cmd += ["--config", str(settings.source)]
        # a password (database_password_file) goes to libpq through PGPASSWORD, never on the
        # command line, where every local user can read it
        from sqlalchemy.engine import URL, make_url

        url, env = make_url(settings.database_url), dict(os.environ)
        if url.password is not None:
            env["PGPASSWORD"] = str(url.password)
            url = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
        subprocess.Popen(cmd + ["retrain-now", "--db", url.render_as_string(hide_password=False)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        return ("retraining started in the background; it runs only if the labels changed since the active "
                "model, and its decision appears here and under Status.")

    def rollback_forecast(_version: str | None) -> str:
        from nscmonitor.registry import forecasts as FR

        back = FR.rollback(settings.models_dir)
        return (f"rolled back: the well forecast {back.version if back else 'configured in the settings'} serves "
                "again; the daemon switches between batches.")

    return {
        "promote": ModelAction("Promote", "", promote),
        "rollback": ModelAction("Roll back", "", rollback),
        "retrain": ModelAction("Retrain now", "", retrain),
        "rollback_forecast": ModelAction("Roll back forecast", "no forecast_model in the settings: no well forecast "
                                         "runs", rollback_forecast if settings.forecast_model else None),
    }


LabelTarget = tuple[str, str, list[str]]  # experiment, plate, wells


def label_action(settings: Settings) -> Callable[[LabelTarget | None, str], str]:
    """Labelling selected wells by hand: a new label set, checked like an imported file."""
    from nscmonitor.labels import label_wells
    from nscmonitor.store.db import open_engine

    def label(target: LabelTarget | None, cls: str) -> str:
        if target is None or not target[2]:
            raise ValueError("open a plate and select wells in the plate map first")
        experiment, plate, wells = target
        version, n = label_wells(open_engine(settings.database_url), experiment, plate, wells, cls)
        return f"label set {version}: {n} well(s) of {plate} labelled {cls}; the next retrain uses them."

    return label


#: requeue(ids) -> message; ids None means every quarantined image
RequeueAction = Callable[[list[int] | None], str]


def requeue_action(settings: Settings) -> RequeueAction:
    """Requeueing through the same function as ``nscmonitor requeue``, on its own writable
    connection (the dashboard otherwise only reads the store)."""
    from nscmonitor.store.db import open_engine
    from nscmonitor.store.requeue import requeue, select_quarantined

    def run(ids: list[int] | None) -> str:
        engine = open_engine(settings.database_url)
        try:
            chosen = select_quarantined(engine, ids=ids or (), everything=ids is None)
            if not chosen:
                return "no quarantined image selected (failed images are retried by the daemon on their own)"
            n = requeue(engine, chosen)
        finally:
            engine.dispose()
        return f"{n} quarantined image(s) back in the queue; the daemon scores them next."

    return run

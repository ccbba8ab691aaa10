"""Typed SQLAlchemy 2.0 models. They stay inside ``store/`` (house rule 7).

The ``images`` table is also the daemon's durable queue. Its state machine:

    pending --claim--> processing --ok--> done
       ^                   |  \\--bad input (corrupt, truncated, huge, unplaceable)--> quarantined
       |                   \\--transient (locked, half-written, decode retry)--> failed
       \\------ retry when next_attempt_at is due (exponential backoff) ------/
    done --file rewritten with new content (new size/mtime and hash)--> pending (rewritten=1)
    done --a new model was promoted (retrain.rescore)--> rescore --claimed when no pending--> processing
    (a channel that is not scored, or a file that is not ours to score) --> skipped
    done | pending | failed | rescore --the folder's channel or z setting changed (store.selection_rule)--> skipped
    skipped for its channel or plane --the settings now score it--> pending (or done, when scored before)

* A row is created ``pending`` when a ready file is first seen (or ``quarantined`` straight
  away when its name cannot be placed on a plate: recorded with the reason, never dropped).
* Rows left ``processing`` by a crash go back to ``pending`` at start (``requeue_stale``).
  Daemons sharing one PostgreSQL database hold a lease on what they claim (``lease_owner``,
  ``lease_expires_at``), renewed while they live; any of them puts an image whose lease ran
  out back to ``pending`` (``Writer.reap_expired``), and a result for an image whose lease
  was lost is dropped (``Writer.complete``).
* Idempotency: the row is unique on path; the same path with the same size+mtime is a
  no-op, and a changed file whose content hash equals the stored one is a no-op too.
* ``failed`` rows are retried up to ``MAX_ATTEMPTS`` then quarantined with the last reason.

The states are ``nscmonitor.core.queue.QueueState`` (stored as their plain words).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from nscmonitor.core.queue import QueueState


class Base(DeclarativeBase):
    pass


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    watch_path: Mapped[str | None] = mapped_column(Text)
    induction_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    plates: Mapped[list[Plate]] = relationship(back_populates="experiment")


class Plate(Base):
    __tablename__ = "plates"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    name: Mapped[str] = mapped_column(String(200))
    plate_format: Mapped[int] = mapped_column(Integer, default=96)
    experiment: Mapped[Experiment] = relationship(back_populates="plates")


class Acquisition(Base):
    """An acquisition (measurement) of a plate whose vendor counts scan indexes from 1 in each:
    a plate read daily as one Harmony measurement a day gives ``sk1`` every day. Its
    ``ordinal`` (0 for the plate's first, in the order first seen) places its scans apart from
    the others' in the images' and readouts' time keys (``core.scans.acquisition_time_key``)."""

    __tablename__ = "acquisitions"
    __table_args__ = (UniqueConstraint("plate_id", "name"), UniqueConstraint("plate_id", "ordinal"))
    id: Mapped[int] = mapped_column(primary_key=True)
    plate_id: Mapped[int] = mapped_column(ForeignKey("plates.id"))
    name: Mapped[str] = mapped_column(String(500))
    ordinal: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Well(Base):
    __tablename__ = "wells"
    __table_args__ = (UniqueConstraint("plate_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    plate_id: Mapped[int] = mapped_column(ForeignKey("plates.id"))
    name: Mapped[str] = mapped_column(String(8))
    row: Mapped[int] = mapped_column(Integer)
    col: Mapped[int] = mapped_column(Integer)
    condition: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict | None] = mapped_column(JSON)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_state_due", "status", "next_attempt_at"),
        Index("ix_images_well_time", "well_id", "time_key"),
        Index("ix_images_experiment", "experiment_id", "id"),
        Index("ix_images_updated", "updated_at"),  # the dashboard's live poll and the error list
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    path: Mapped[str] = mapped_column(Text, unique=True)
    relpath: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    mtime: Mapped[float] = mapped_column(Float)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=QueueState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    #: who holds a ``processing`` image (``Writer.owner``) and until when (wall-clock seconds):
    #: daemons sharing one database put an image whose lease ran out back in the queue
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    rewritten: Mapped[bool] = mapped_column(Boolean, default=False)
    profile: Mapped[str | None] = mapped_column(String(40))
    well_id: Mapped[int | None] = mapped_column(ForeignKey("wells.id"))
    field: Mapped[int | None] = mapped_column(Integer)
    channel: Mapped[str | None] = mapped_column(String(60))
    z: Mapped[int | None] = mapped_column(Integer)
    timepoint: Mapped[int | None] = mapped_column(Integer)
    time_key: Mapped[int | None] = mapped_column(Integer)
    elapsed_h: Mapped[float | None] = mapped_column(Float)
    acquired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    qc: Mapped[dict | None] = mapped_column(JSON)
    qc_passed: Mapped[bool | None] = mapped_column(Boolean)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    discovered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(120), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    scheme: Mapped[str] = mapped_column(String(20))
    classes: Mapped[list] = mapped_column(JSON)
    meta: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="candidate")
    labels_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ServedModel(Base):
    """A model file the daemon served without the registry (``--model``, ``model = ...``), its
    metadata kept so that the dashboard and the report read its call rule and provenance from
    the database, wherever they run, as they read a registered version's."""

    __tablename__ = "served_models"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(120), unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict] = mapped_column(JSON)
    first_served_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("image_id", "model_version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(String(120))
    classes: Mapped[list] = mapped_column(JSON)
    prob_mean: Mapped[list] = mapped_column(JSON)
    prob_sd: Mapped[list] = mapped_column(JSON)
    fraction: Mapped[list] = mapped_column(JSON)
    n_tiles: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    tiles: Mapped[bytes | None] = mapped_column(LargeBinary)
    engine: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: out-of-distribution score (mean over tiles) and flag; NULL: the model has none
    ood_score: Mapped[float | None] = mapped_column(Float)
    ood: Mapped[bool | None] = mapped_column(Boolean)


class WellReadout(Base):
    __tablename__ = "well_readouts"
    __table_args__ = (
        UniqueConstraint("well_id", "time_key", "model_version"),
        Index("ix_readouts_plate_time", "plate_id", "model_version", "time_key"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    well_id: Mapped[int] = mapped_column(ForeignKey("wells.id"))
    plate_id: Mapped[int] = mapped_column(ForeignKey("plates.id"))
    time_key: Mapped[int] = mapped_column(Integer)
    timepoint: Mapped[int | None] = mapped_column(Integer)
    model_version: Mapped[str] = mapped_column(String(120))
    elapsed_h: Mapped[float | None] = mapped_column(Float)
    acquired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    classes: Mapped[list] = mapped_column(JSON)
    prob_mean: Mapped[list] = mapped_column(JSON)
    prob_sd: Mapped[list] = mapped_column(JSON)
    fraction: Mapped[list] = mapped_column(JSON)
    n_images: Mapped[int] = mapped_column(Integer)
    n_tiles: Mapped[int] = mapped_column(Integer)
    n_qc_failed: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: scored images flagged out of distribution; NULL: the model gives no flag
    n_ood: Mapped[int | None] = mapped_column(Integer)


class FrameFeatures(Base):
    """The well model's features of one scored image (``scoring.well_sequence``), kept so a
    well's forecast can be recomputed from its earlier frames without decoding them again."""

    __tablename__ = "frame_features"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    extractor: Mapped[str] = mapped_column(String(60))
    feature_values: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WellForecast(Base):
    """The time-aware well model's forecast of a well's fate at one time, from its frames up
    to that time; its own model version and inputs (provenance), beside the per-image readouts."""

    __tablename__ = "well_forecasts"
    __table_args__ = (
        UniqueConstraint("well_id", "time_key", "model_version"),
        Index("ix_forecasts_plate_time", "plate_id", "model_version", "time_key"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    well_id: Mapped[int] = mapped_column(ForeignKey("wells.id"))
    plate_id: Mapped[int] = mapped_column(ForeignKey("plates.id"))
    time_key: Mapped[int] = mapped_column(Integer)
    elapsed_h: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(120))
    model_sha256: Mapped[str] = mapped_column(String(64))
    normalisation: Mapped[str] = mapped_column(String(40))
    classes: Mapped[list] = mapped_column(JSON)
    probs: Mapped[list] = mapped_column(JSON)
    #: time points of the well the forecast read (all at or before ``elapsed_h``) and its images
    n_timepoints: Mapped[int] = mapped_column(Integer)
    n_images: Mapped[int] = mapped_column(Integer)
    #: the plate's wells whose induction frames made the reference
    n_reference_wells: Mapped[int | None] = mapped_column(Integer)
    #: flagged by the forecast model's own out-of-distribution score, and the well's frames up
    #: to this time it flags; NULL where the model has no such score (flag unavailable)
    ood: Mapped[bool | None] = mapped_column(Boolean)
    n_ood: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DaemonStatus(Base):
    """One row per daemon (host + pid): its heartbeat and health, for the GUI and status."""

    __tablename__ = "daemon_status"
    id: Mapped[int] = mapped_column(primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(20))
    engine: Mapped[str | None] = mapped_column(String(60))
    model_version: Mapped[str | None] = mapped_column(String(120))
    watched: Mapped[list | None] = mapped_column(JSON)
    images_per_s: Mapped[float | None] = mapped_column(Float)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_at", "at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(40))
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON)


class LabelSet(Base):
    """One import of end-point labels. Versions only grow; a retrain records the highest
    version it used, so 'labels changed since the active model' is one comparison."""

    __tablename__ = "label_sets"
    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    n_labels: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Label(Base):
    """A well's end-point fate (label and/or per-class fractions). A later label set
    overrides an earlier one for the same well."""

    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_well", "well_id", "label_set_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    label_set_id: Mapped[int] = mapped_column(ForeignKey("label_sets.id"))
    well_id: Mapped[int] = mapped_column(ForeignKey("wells.id"))
    label: Mapped[str] = mapped_column(String(40))
    fractions: Mapped[dict | None] = mapped_column(JSON)


class RetrainRun(Base):
    """One retrain attempt and its decision, with the numbers behind it."""

    __tablename__ = "retrain_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    trigger: Mapped[str] = mapped_column(String(20))
    labels_version: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))  # running | promoted | rejected | failed | skipped
    candidate_version: Mapped[str | None] = mapped_column(String(120))
    baseline_version: Mapped[str | None] = mapped_column(String(120))
    reason: Mapped[str | None] = mapped_column(Text)
    numbers: Mapped[dict | None] = mapped_column(JSON)
    run_dir: Mapped[str | None] = mapped_column(Text)


class ScheduleState(Base):
    """What a scheduled job must remember across restarts, in plain columns (never a
    pickled job: whoever can write the database must not be able to run code through it).
    The job itself is rebuilt from the configuration at every start."""

    __tablename__ = "schedule_state"
    job_id: Mapped[str] = mapped_column(String(60), primary_key=True)
    schedule: Mapped[str] = mapped_column(Text)
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[str | None] = mapped_column(String(20))

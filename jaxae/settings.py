"""The run's own settings (how long, in what batches, how it saves and logs), read once from a config."""

from __future__ import annotations

import dataclasses

import ml_collections

from jaxae.errors import UserError

COMPUTE_DTYPES = ("", "bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the host loop needs of a config, as plain values (experiments/configs/default.py documents each).

  `resumable` fields may change when a run resumes (how long it runs, how it logs and saves); any other
  changed field makes a different run, which `workdir.refuse_changed_config` refuses.
  """
  seed: int
  batch_size: int = dataclasses.field(metadata={"positive": True})
  epochs: int = dataclasses.field(metadata={"positive": True, "resumable": True})
  shuffle: bool = True
  chunk_steps: int = dataclasses.field(default=100, metadata={"positive": True, "resumable": True})
  scan_unroll: int = dataclasses.field(default=1, metadata={"positive": True, "resumable": True})
  eval_batch_size: int = dataclasses.field(default=1000, metadata={"positive": True, "resumable": True})
  checkpoint_every_epochs: int = dataclasses.field(default=1, metadata={"positive": True, "resumable": True})
  keep_checkpoints: int = dataclasses.field(default=3, metadata={"positive": True, "resumable": True})
  log_first_steps: int = dataclasses.field(default=0, metadata={"resumable": True})
  num_devices: int = dataclasses.field(default=0, metadata={"resumable": True})
  compute_dtype: str = ""
  start_over_if_damaged: bool = dataclasses.field(default=False, metadata={"resumable": True})

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Settings:
    """The config's top-level fields of these names; UserError for a value out of range."""
    require_fields(config, [f.name for f in dataclasses.fields(cls)])
    settings = cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})
    settings.check()
    return settings

  def check(self) -> None:
    for f in dataclasses.fields(self):
      if f.metadata.get("positive") and int(getattr(self, f.name)) < 1:
        raise UserError(f"config.{f.name} must be a positive integer, got {getattr(self, f.name)}; "
                        f"set --config.{f.name}=N with N >= 1.")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise UserError(f"Unknown compute_dtype {self.compute_dtype!r}; known: '' (the parameters' dtype), "
                      "'bfloat16', 'float32'.")


def require_fields(config: ml_collections.ConfigDict, names) -> None:
  """UserError naming the first of `names` that the config lacks (a config.json of an older jaxae)."""
  missing = [name for name in names if name not in config]
  if missing:
    raise UserError(f"The config has no field {missing[0]!r} (a config.json saved by an older jaxae?); start "
                    "from a current config in experiments/configs/, or train it again with the current code.")


# Config fields outside Settings that a resumed run may change: where the data is read from, the switch itself.
RESUMABLE_ELSEWHERE = ("allow_config_change", "data.data_dir", "data.download", "data.feed")
RESUMABLE_CHANGES = tuple(f.name for f in dataclasses.fields(Settings) if f.metadata.get("resumable")) + RESUMABLE_ELSEWHERE

"""A configs/ravdess.py variant with dotted-key overrides, as the tests build their configs."""


def ravdess_config(variant="smoke", **overrides):
  """`configs.ravdess.get_config(variant)` with each override set, a dotted key ('data.source') naming a
  nested field."""
  from configs import ravdess
  config = ravdess.get_config(variant)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config

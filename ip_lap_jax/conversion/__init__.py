"""Official PyTorch checkpoints <-> Flax variables: the key rule (`keys`), numpy
state_dict conversion with a report of every bad key (`state_dict`), and `.pth` file
I/O (`pth`, the only module of the package that imports torch, lazily)."""

from ip_lap_jax.conversion.keys import (flax_path_to_torch_key, strip_module_prefix,
                                        torch_key_to_flax)
from ip_lap_jax.conversion.pth import export_state_dict, read_torch_checkpoint
from ip_lap_jax.conversion.state_dict import (ConversionError, detect_model, split_state_dict,
                                              state_dict_to_variables, variables_to_state_dict)

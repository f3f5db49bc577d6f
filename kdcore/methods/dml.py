"""Deep mutual learning (Zhang et al. 2018): student and peer learn together, no pre-trained teacher."""

from __future__ import annotations

from kdcore.errors import ConfigError
from kdcore.methods.base import Method, MethodSpec, Term, kl, num, param

SPEC = MethodSpec(
    "dml", "Deep mutual learning",
    "Zhang, Xiang, Hospedales & Lu 2018, \"Deep Mutual Learning\"",
    "No pre-trained teacher is needed: the student and a peer network (the teacher's architecture, trained "
    "from scratch alongside) learn together, each minimising cross-entropy plus the KL divergence towards "
    "the other's predictions. The trained teacher is still reported for comparison but not learned from. "
    "Replaces the CE and KD terms (weights.ce and weights.kd are not used).",
    {"temperature": param(1.0, 0.1, 20.0, "softmax temperature of the mutual KL terms (1 in the paper)")},
    terms=(Term("student_dml", "student: CE + KL to peer"), Term("peer_dml", "peer: CE + KL to student")),
    uses_logit_kd=False, uses_labels=False, trains_extra_modules=True,
)


class MutualLearning(Method):
    spec = SPEC

    def check(self, config):
        super().check(config)
        if config.labeled_fraction < 1 or config.transfer is not None:
            raise ConfigError("method dml learns from labels alone, not from the teacher's outputs: labeled_fraction "
                              "and transfer need a method that learns from a teacher (e.g. kd)")
        if config.teacher.arch == "minilm-l6" or config.teacher.arch.startswith("hf:"):
            raise ConfigError(f"method dml trains a peer of the teacher's architecture from scratch; {config.teacher.arch} "
                              "is a pretrained encoder — use teacher.arch=tiny-transformer (or bilstm) for dml on text")

    def objective(self, build):
        """The peer (teacher's architecture, fresh weights) is the objective's module: trained alongside."""
        import torch

        from kdcore import losses
        from kdcore.methods.objective import Objective
        from kdcore.models import build_model

        config, info, temperature = build.config, build.data_info, build.params["temperature"]
        with torch.random.fork_rng(devices=[]):  # the peer's init must not shift the caller's random stream
            torch.manual_seed(config.seed + 1)
            peer = build_model(config.teacher.arch, info.input_shape, info.num_classes).to(build.device)

        def terms(ctx):
            student_loss, peer_loss = losses.mutual_learning_loss([ctx.student[0], peer(ctx.x)], ctx.y, temperature)
            return {"method": student_loss + peer_loss, "student_dml": student_loss, "peer_dml": peer_loss}
        return Objective(build, terms=terms, modules=peer)

    def formula(self, weights, temperature, params):
        # both networks' objectives, as the trainer sums them; weights.ce and weights.kd are not used
        tp = num(params["temperature"])
        soft = (lambda z: rf"\sigma({z})") if params["temperature"] == 1 else (lambda z: rf"\sigma({z}/{tp})")
        scale = "" if params["temperature"] == 1 else rf"{tp}^2\,"
        terms = [rf"\mathrm{{CE}}\big(y,\ \sigma(z_s)\big) + {scale}{kl(soft('z_p'), soft('z_s'))}",
                 rf"\mathrm{{CE}}\big(y,\ \sigma(z_p)\big) + {scale}{kl(soft('z_s'), soft('z_p'))}"]
        return terms + super().formula(weights, temperature, params)

    def legend(self, params):
        return [r"$z_p$ are the logits of the peer (the teacher's architecture, trained from scratch alongside); "
                r"each network learns from its own line only"]


METHOD = MutualLearning()

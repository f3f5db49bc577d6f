"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

The student's and the teacher's penultimate features are projected by two learned heads to a
shared 128-d unit sphere. Each training example keeps its latest embedding in a memory bank per
network (momentum updates). For a batch, the teacher's embedding of an example must pick out the
student's memory of the *same* example among K negatives (examples of other classes), and vice
versa; the objective is the paper's NCE with the noise distribution uniform over the training set.

Negatives are drawn once per step and shared by the batch (the paper draws per example): the same
K uniform draws with each anchor's own class masked out, which keeps a step to two [B, K] matrix
products instead of gathering B·K embeddings. K defaults to the paper's 16384, capped at the
training-set size minus one.
"""

from __future__ import annotations

from kdcore.methods.base import Method, MethodSpec, Term, num, param

SPEC = MethodSpec(
    "crd", "Contrastive representation distillation",
    "Tian, Krishnan & Isola 2020, \"Contrastive Representation Distillation\" (ICLR)",
    "The student learns the teacher's representation by contrast: learned heads map both networks' penultimate "
    "features to a 128-d unit sphere, and each example's teacher embedding must pick out the student's "
    "embedding of the same example among K negatives (examples of other classes, read from a memory bank over "
    "the whole training set, updated with momentum), and the other way round. The NCE objective maximises a "
    "lower bound on the mutual information between the two representations. Added to CE and KD: "
    "loss = ce·CE + kd·KD + weight·CRD (weights.kd = 0 gives CRD alone, as the paper's main table).",
    {"weight": param(0.8, 0.0, 100.0, "β, the weight of the contrastive term (0.8 in the paper)"),
     "negatives": param(16384, 1, 1_000_000, "K, negatives per anchor (16384 in the paper; capped at the "
                        "training-set size − 1)", integer=True),
     "nce_temperature": param(0.07, 0.01, 1.0, "τ of the critic exp(⟨g_s, g_t⟩/τ) (0.07 in the paper)"),
     "momentum": param(0.5, 0.0, 0.999, "momentum of the memory-bank updates (0.5 in the paper)"),
     "embed_dim": param(128, 8, 1024, "size of the shared embedding (128 in the paper)", integer=True)},
    terms=(Term("crd", "CRD (NCE, unweighted)"),),
    needs_teacher_features=True, needs_indices=True, trains_extra_modules=True,
)


class CRD(Method):
    spec = SPEC

    def objective(self, build):
        from kdcore.methods.objective import Objective, features

        params = build.params
        bank = _contrast_module(build)

        def terms(ctx):
            crd = bank.loss(features(ctx.student, "student", "crd"), features(ctx.teacher, "teacher", "crd"),
                            ctx.indices, ctx.y)
            return {"method": params["weight"] * crd, "crd": crd}
        return Objective(build, terms=terms, modules=bank)

    def formula(self, weights, temperature, params):
        k, tau = num(params["negatives"]), num(params["nce_temperature"])
        return super().formula(weights, temperature, params) + [
            rf"{num(params['weight'])}\,\big(\mathcal{{L}}_{{\mathrm{{NCE}}}}(g_t \to \mathcal{{M}}_s)"
            rf" + \mathcal{{L}}_{{\mathrm{{NCE}}}}(g_s \to \mathcal{{M}}_t)\big)_{{K={k},\ \tau={tau}}}"]

    def legend(self, params):
        return [r"$g_s, g_t$ are the learned unit-length embeddings of the penultimate features; $\mathcal{M}$ is "
                r"each network's memory bank over the training set; each anchor must find its own example among "
                r"$K$ negatives of other classes"]


def _contrast_module(build):
    """Heads, memory banks and NCE normalisers as one nn.Module (its buffers ride in the checkpoints)."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    from kdcore import losses

    params, n = build.params, build.train_size
    dim = int(params["embed_dim"])
    negatives = int(min(params["negatives"], max(n - 1, 1)))
    tau, momentum = params["nce_temperature"], params["momentum"]
    student_dim, teacher_dim = build.feature_dims

    class ContrastMemory(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_student = nn.Linear(student_dim, dim)
            self.embed_teacher = nn.Linear(teacher_dim, dim)
            bound = 1.0 / math.sqrt(dim / 3)  # the paper's uniform init of the banks
            generator = torch.Generator().manual_seed(build.config.seed + 2)
            self.register_buffer("memory_student", (torch.rand(n, dim, generator=generator) * 2 - 1) * bound)
            self.register_buffer("memory_teacher", (torch.rand(n, dim, generator=generator) * 2 - 1) * bound)
            self.register_buffer("labels", torch.full((n,), -1, dtype=torch.long))
            self.register_buffer("normalizers", torch.full((2,), -1.0))  # Z of each direction, fixed at step 1
            self.generator = generator

        def loss(self, student_features, teacher_features, indices, labels):
            g_s = F.normalize(self.embed_student(student_features.float()), dim=1)
            g_t = F.normalize(self.embed_teacher(teacher_features.float()), dim=1)
            self.labels[indices] = labels
            negative = torch.randint(0, n, (negatives,), generator=self.generator).to(indices.device)
            # an anchor's own class is never its negative (the paper's "exact" sampling); unknown labels count
            valid = self.labels[negative].unsqueeze(0) != labels.unsqueeze(1)
            to_student = losses.crd_nce_loss(g_t, self.memory_student[indices], self.memory_student[negative], valid,
                                             tau, n, self._normalizer(0, g_t, self.memory_student[negative]))
            to_teacher = losses.crd_nce_loss(g_s, self.memory_teacher[indices], self.memory_teacher[negative], valid,
                                             tau, n, self._normalizer(1, g_s, self.memory_teacher[negative]))
            with torch.no_grad():  # momentum update of the examples just seen, kept on the sphere
                for memory, fresh in ((self.memory_student, g_s), (self.memory_teacher, g_t)):
                    memory[indices] = F.normalize(memory[indices] * momentum + fresh.detach() * (1 - momentum), dim=1)
            return to_student + to_teacher

        def _normalizer(self, which, anchors, bank):
            """Z ≈ N·mean exp(⟨v, m⟩/τ) from the first batch, then fixed (as the paper's NCE average)."""
            if self.normalizers[which] < 0:
                with torch.no_grad():
                    self.normalizers[which] = torch.exp(anchors.detach() @ bank.t() / tau).mean() * n
            return self.normalizers[which].clone()  # a copy: the buffer may change while the graph lives

    return ContrastMemory().to(build.device)


METHOD = CRD()

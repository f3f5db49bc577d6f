"""DistilBERT's loss (Sanh, Debut, Chaumond & Wolf 2019): soft-target KD plus a cosine loss on hidden states."""

from __future__ import annotations

from kdcore.errors import ConfigError
from kdcore.methods.base import Method, MethodSpec, Term, num, param

SPEC = MethodSpec(
    "distilbert", "DistilBERT (soft targets + hidden-state cosine)",
    "Sanh, Debut, Chaumond & Wolf 2019, \"DistilBERT, a distilled version of BERT: smaller, faster, cheaper "
    "and lighter\"",
    "A Transformer student learns the teacher's softened class probabilities (the KD term, at temperature T) "
    "and, token by token, the direction of the teacher's last hidden states: a cosine loss 1 − cos(h_s, h_t) "
    "over every real token of the sentence. When the widths differ a learned linear map takes the student's "
    "states to the teacher's width. DistilBERT also starts the student from every other teacher layer: "
    "student.from_teacher with a student as wide as the teacher (e.g. tiny-transformer:3,384 under minilm-l6). "
    "Task-specific here: the pre-training's masked-language-model term is left out. "
    "loss = ce·CE + kd·KD + cosine·COS.",
    {"cosine": param(1.0, 0.0, 100.0, "weight of the hidden-state cosine loss (1 beside DistilBERT's 5 for the "
                     "soft targets and 2 for masked LM)")},
    terms=(Term("cosine", "hidden-state cosine (unweighted)"),),
    trains_extra_modules=True, text_only=True, teacher_token_states=(-1,),
)


def check_transformers(config, method: str, *, hf_teacher: bool) -> None:
    """A Transformer student, and a teacher whose hidden states per token the method can read."""
    from kdcore.model_names import hf_name, transformer_size

    if transformer_size(config.student.arch) is None:
        raise ConfigError(f"method {method} matches a Transformer's hidden states; student.arch {config.student.arch} "
                          "has none — use tiny-transformer (or tiny-transformer:LAYERS,WIDTH)")
    teacher = config.teacher.arch
    if teacher == "minilm-l6" or transformer_size(teacher) is not None or (hf_teacher and hf_name(teacher) is not None):
        return
    valid = "minilm-l6, tiny-transformer" + (" or hf:<id>" if hf_teacher else "")
    raise ConfigError(f"method {method} needs a Transformer teacher ({valid}); teacher.arch is {teacher}")


class DistilBERT(Method):
    spec = SPEC

    def check(self, config):
        check_transformers(config, "distilbert", hf_teacher=True)

    def objective(self, build):
        from torch import nn

        from kdcore import losses
        from kdcore.methods.objective import Objective

        weight = build.params["cosine"]
        student_width, teacher_width = build.feature_dims
        project = nn.Linear(student_width, teacher_width).to(build.device) if student_width != teacher_width else None

        def terms(ctx):
            student_states = ctx.student[2][-1]
            teacher_states = ctx.teacher[2][0]  # the teacher's last hidden states (spec.teacher_token_states)
            mask = (ctx.x >= 0)[:, : teacher_states.shape[1]]  # the real tokens of the trimmed batch
            if project is not None:
                student_states = project(student_states)
            cosine = losses.hidden_cosine_loss(student_states, teacher_states, mask)
            return {"method": weight * cosine, "cosine": cosine}
        return Objective(build, terms=terms, modules=project)

    def formula(self, weights, temperature, params):
        return super().formula(weights, temperature, params) + [
            rf"{num(params['cosine'])}\,\tfrac{{1}}{{|x|}}\textstyle\sum_i \big(1 - \cos(W h^s_i,\ h^t_i)\big)"]

    def legend(self, params):
        return [r"$h^s_i, h^t_i$ are the last hidden states of token $i$; $W$ maps the student's width to the "
                r"teacher's (the identity when they are equal); the sum runs over the sentence's $|x|$ tokens"]


METHOD = DistilBERT()

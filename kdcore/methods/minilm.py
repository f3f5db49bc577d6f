"""MiniLM's deep self-attention distillation (Wang et al. 2020): attention distributions and value relations."""

from __future__ import annotations

from kdcore.errors import ConfigError
from kdcore.methods.base import Method, MethodSpec, Term, kl, num, param
from kdcore.methods.distilbert import check_transformers

SPEC = MethodSpec(
    "minilm", "MiniLM (self-attention transfer)",
    "Wang, Wei, Dong, Bao, Yang & Zhou 2020, \"MiniLM: Deep Self-Attention Distillation for Task-Agnostic "
    "Compression of Pre-Trained Transformers\" (relation heads: MiniLMv2, Wang et al. 2021)",
    "A Transformer student mimics the teacher's last self-attention layer rather than its outputs: for every "
    "token, the distribution of its attention over the sentence (softmax of queries · keys) and the value "
    "relation (softmax of values · values), each matched with KL(teacher ‖ student). Queries, keys and values "
    "are split into the same number of relation heads in both networks (MiniLMv2), so widths and head counts "
    "may differ. Added to CE and KD here (task-specific): loss = ce·CE + kd·KD + weight·(AT + VR).",
    {"weight": param(1.0, 0.0, 100.0, "weight of the attention-distribution and value-relation terms"),
     "relation_heads": param(4, 1, 64, "relation heads the queries, keys and values are split into; must divide "
                             "both widths (with the heads of both networks it is MiniLM's own per-head transfer)",
                             integer=True)},
    terms=(Term("attention", "attention distributions (KL)"), Term("value_relation", "value relations (KL)")),
    text_only=True, teacher_token_states=(-2,),  # the last layer's input: its queries, keys and values follow
)


class MiniLM(Method):
    spec = SPEC

    def check(self, config):
        from kdcore.model_names import MINILM_WIDTH, transformer_size

        check_transformers(config, "minilm", hf_teacher=False)
        heads = int(config.method_params.get("relation_heads", SPEC.params["relation_heads"].default))
        widths = {"student": transformer_size(config.student.arch)[1],
                  "teacher": MINILM_WIDTH if config.teacher.arch == "minilm-l6" else transformer_size(config.teacher.arch)[1]}
        for role, width in widths.items():
            if width % heads:
                raise ConfigError(f"method.relation_heads {heads} does not divide the {role}'s width {width}; pick a "
                                  f"common divisor of {widths['student']} and {widths['teacher']}")

    def objective(self, build):
        from kdcore import losses
        from kdcore.methods.objective import Objective

        weight, heads = build.params["weight"], int(build.params["relation_heads"])
        student, teacher = build.student, build.teacher

        def terms(ctx):
            s_q, s_k, s_v = student.last_attention_inputs(ctx.student[2][-2])
            t_q, t_k, t_v = teacher.last_attention_inputs(ctx.teacher[2][0])  # frozen: no graph to the teacher
            mask = (ctx.x >= 0)[:, : s_q.shape[1]]
            attention = losses.relation_kl_loss(s_q, s_k, t_q.detach(), t_k.detach(), mask, heads)
            values = losses.relation_kl_loss(s_v, s_v, t_v.detach(), t_v.detach(), mask, heads)
            return {"method": weight * (attention + values), "attention": attention, "value_relation": values}
        return Objective(build, terms=terms)

    def formula(self, weights, temperature, params):
        body = (kl(r"\mathrm{softmax}(Q^t_r K^{t\top}_r/\sqrt{d_t})", r"\mathrm{softmax}(Q^s_r K^{s\top}_r/\sqrt{d_s})")
                + " + " + kl(r"\mathrm{softmax}(V^t_r V^{t\top}_r/\sqrt{d_t})",
                             r"\mathrm{softmax}(V^s_r V^{s\top}_r/\sqrt{d_s})"))
        return super().formula(weights, temperature, params) + [
            rf"{num(params['weight'])}\,\tfrac{{1}}{{{num(params['relation_heads'])}\,|x|}}\textstyle\sum_r \sum_i "
            rf"\big({body}\big)_i"]

    def legend(self, params):
        return [r"$Q_r, K_r, V_r$ are relation head $r$ of the last layer's queries, keys and values, each row $i$ a "
                r"token's distribution over the sentence; $d$ is a relation head's size in each network"]


METHOD = MiniLM()

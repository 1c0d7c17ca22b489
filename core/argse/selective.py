"""Selective mode: Stage A, then cycles of B1 / B2 / B3 (docs/METHODS.md §3).

- Stage A (``stageA_epochs``): mixture CE on S1; thresholds ``t_k`` start at the
  ``1 - tau_k`` quantile of the margins of true-label group k.
- B1 (``b1_epochs``): gate + learnable ``t [K]`` minimise
  ``L_sel + l_q pinball + l_cov L_cov + l_H H(w) + l_GA KL(w || pi_g)``
  (:func:`core.argse.losses.selective_loss`) on S1.
- B2: ``alpha`` on S1 (:mod:`core.argse.rules`, seed or paper variant).
- B3: ``mu`` on S2 (grid for K = 2, EG / coordinate grid for K > 2), EMA
  ``mu <- mu_ema * mu + (1 - mu_ema) * mu_best``.
- The reported rule (:meth:`_Run.deploy`): B2/B3's ``(alpha, mu)`` with per-group
  thresholds at ``tau_k`` (``final_rule="none"``), or the full plug-in solver on the
  gated posterior (``final_rule="plugin"``); kept only if it beats the uniform mixture
  with the same solver on S2 (``uniform_check``); thresholds then shifted by one
  constant so the rule's coverage on ``tunev`` is ``eval_coverage`` (the operating
  point). See ``SelectiveConfig``.

``val`` metrics are reported after Stage A (``cycle = 0``) and after every cycle, at the
operating point (``coverage`` = ``eval_coverage`` on ``val``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.argse.baselines import fit_plugin
from core.argse.checkpoint import SELECTIVE_FILE, load_checkpoint
from core.argse.config import SelectiveConfig
from core.argse.data import (
    PreparedSplit,
    batch_order,
    check_training_bundle,
    class_to_group_tensor,
    gate_split,
    prepare_split,
    split_tensors,
    stratified_split,
)
from core.argse.features import gating_feature_dim
from core.argse.gating import GatingNet, gate
from core.argse.losses import build_group_priors, mixture_nll_at_label, selective_loss
from core.argse.margins import GroupedPosterior, MarginVariant, margin_and_prediction
from core.argse.predictor import grouped_metrics, predictor_from_state, split_features
from core.argse.rules import (
    MuScorer,
    calibrate_thresholds,
    group_errors,
    search_mu,
    update_alpha_paper,
    update_alpha_seed,
)
from core.argse.temperature import fit_temperatures
from core.argse.training import (
    ArgseResult,
    CheckpointWriter,
    Report,
    check_resume_config,
    load_state,
    optimizer_to,
    rng_state,
    set_rng_state,
)
from core.config import config_to_dict
from core.device import resolve_device
from core.errors import InputError
from core.metrics import area_under_group_curves, coverage_shift, group_error_curves

MODE = "selective_pinball"


def uniform_gate(net: GatingNet) -> GatingNet:
    """A copy of ``net`` whose last layer is zero: softmax weights exactly ``1/E``.

    The uniform mixture expressed in the checkpoint format every consumer already
    loads (a gating net), so nothing downstream needs a special case."""
    import copy

    out = copy.deepcopy(net)
    last = out.net[-1]
    assert isinstance(last, torch.nn.Linear)  # GatingNet ends in its output layer
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return out


class _Run:
    """The mutable state of one selective training (everything a checkpoint holds)."""

    def __init__(self, config: SelectiveConfig, bundle, dev: torch.device, temps, s1, s2, full):
        self.cfg = config
        self.bundle = bundle
        self.dev = dev
        self.temps = list(temps)
        self.s1, self.s2, self.full = s1, s2, full
        e, k = bundle.num_experts, bundle.num_groups
        self.k = k
        self.c2g = class_to_group_tensor(bundle).to(dev)
        self.targets = torch.tensor(config.group_targets(k), dtype=torch.float32, device=dev)
        self.global_target = config.target_coverage
        if config.group_priors == "experts":
            self.pi = build_group_priors(bundle.expert_names, k).to(dev)
        else:
            self.pi = torch.full((k, e), 1.0 / e, device=dev)
        self.net = GatingNet(gating_feature_dim(e), config.hidden_dims, e, config.dropout).to(dev)
        self.t = torch.nn.Parameter(torch.zeros(k, device=dev))
        self.opt = torch.optim.Adam([
            {"params": self.net.parameters(), "weight_decay": config.weight_decay},
            {"params": [self.t], "weight_decay": 0.0}], lr=config.lr)
        self.alpha = torch.ones(k, device=dev)
        self.mu = torch.zeros(k, device=dev)
        # the reported / exported rule (see deploy): may differ from B2/B3's alpha, mu
        self.rule_alpha = torch.ones(k, device=dev)
        self.rule_mu = torch.zeros(k, device=dev)
        self.rule_margin: MarginVariant = config.margin
        self.rule_gate = "learned"
        self.t_eval = torch.zeros(k, device=dev)
        self._uniform_rule: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.gate == "uniform":
            self.net = uniform_gate(self.net)
        # a proper scoring rule instead of the selective loss (SelectiveConfig.gate_loss)
        self.nll_mode = config.gate_loss != "selective"
        self.crossfit = config.gate == "learned" and self.nll_mode and config.cross_fit
        # cross-fitting: fold f's gate is trained on S(f+1) and predicts S(2-f); the
        # deployed gate (self.net) is trained on all of tunev with the same schedule
        self.folds: list[tuple[GatingNet, torch.optim.Optimizer]] = []
        if self.crossfit:
            for _ in range(2):
                fnet = GatingNet(gating_feature_dim(e), config.hidden_dims, e,
                                 config.dropout).to(dev)
                self.folds.append((fnet, torch.optim.Adam(
                    fnet.parameters(), lr=config.lr, weight_decay=config.weight_decay)))
        self.idx1 = self.idx2 = torch.empty(0, dtype=torch.long)
        self._rule_cache: tuple | None = None  # (gate_version, rule) of the plug-in path
        # grouped posteriors by (split, gate): (version, float32 form, float64 form).
        # The gate only moves in training epochs, so every rule step between two epochs
        # reads the same posteriors (a nll-mode gate: all cycles); see _grouped
        self._gp_cache: dict[tuple[str, str], tuple[int, GroupedPosterior,
                                                    GroupedPosterior]] = {}
        self._val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.gate_version = 0  # +1 per gate training epoch
        self.gen = torch.Generator().manual_seed(config.seed)
        self.logs: list[dict] = []
        self.step = -1  # -1: nothing done; 0: Stage A done; c: cycle c done

    # ---- training steps ---------------------------------------------------------------
    def _clip_step(self, loss, opt=None, params=None):
        opt = self.opt if opt is None else opt
        params = [*self.net.parameters(), self.t] if params is None else params
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()

    def _nll_epoch(self, net: GatingNet, opt, split: PreparedSplit, params) -> float:
        """One epoch of the mixture NLL on ``split``; ``balanced_nll`` weighs sample i by
        ``N / (K' N_{g_i})`` (K' non-empty true-label groups of the split), so every group
        carries the same total weight. Returns the mean batch loss."""
        net.train()
        if self.cfg.gate_loss == "balanced_nll":
            counts = torch.bincount(split.groups, minlength=self.k).to(torch.float32)
            present = int((counts > 0).sum())
            sw = (len(split) / (present * counts.clamp(min=1.0)))[split.groups]
        else:
            sw = torch.ones(len(split), device=self.dev)
        total, n = torch.zeros((), device=self.dev), 0
        for idx in batch_order(len(split), self.cfg.batch_size, self.gen):
            idx = idx.to(self.dev)
            w = torch.softmax(net(split.features[idx]), dim=1)
            loss = (mixture_nll_at_label(w, split.label_probs_at(idx)) * sw[idx]).mean()
            self._clip_step(loss, opt, params)
            total += loss.detach()
            n += 1
        return float(total) / max(n, 1)

    def gate_epoch(self) -> float:
        """One epoch of the proper-scoring-rule gate (``gate_loss`` nll / balanced_nll):
        the deployed gate on S1 (all of tunev when cross-fitting), then the fold gates."""
        self.gate_version += 1
        loss = self._nll_epoch(self.net, self.opt, self.full if self.crossfit else self.s1,
                               list(self.net.parameters()))
        for (fnet, fopt), split in zip(self.folds, (self.s1, self.s2)[:len(self.folds)],
                                       strict=True):
            self._nll_epoch(fnet, fopt, split, list(fnet.parameters()))
        return loss

    def stage_a_epoch(self) -> float:
        if self.nll_mode:
            return self.gate_epoch()
        self.gate_version += 1
        self.net.train()
        total, n = torch.zeros((), device=self.dev), 0
        for idx in batch_order(len(self.s1), self.cfg.batch_size, self.gen):
            idx = idx.to(self.dev)
            w = torch.softmax(self.net(self.s1.features[idx]), dim=1)
            loss = mixture_nll_at_label(w, self.s1.label_probs_at(idx)).mean()
            self._clip_step(loss)
            total += loss.detach()
            n += 1
        return float(total) / max(n, 1)

    def init_thresholds(self) -> None:
        """``t_k`` = the ``1 - tau_k`` quantile of S1 margins of true-label group k."""
        gp = self._grouped("s1")[0]
        m, _ = margin_and_prediction(gp, self.alpha, self.mu, self.c2g, self.cfg.margin)
        with torch.no_grad():
            for g in range(self.k):
                sel = m[self.s1.groups == g]
                if sel.numel():
                    self.t[g] = torch.quantile(sel, 1.0 - float(self.targets[g]))

    def b1_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.gate_version += 1
        self.net.train()
        total, n = torch.zeros((), device=self.dev), 0
        parts_sum: dict[str, torch.Tensor] = {}
        for idx in batch_order(len(self.s1), cfg.batch_size, self.gen):
            idx = idx.to(self.dev)
            w, eta = gate(self.net, self.s1.features[idx], self.s1.probs_at(idx))
            loss, parts, _, _ = selective_loss(
                eta, w, self.s1.labels[idx], self.s1.groups[idx], alpha=self.alpha,
                mu=self.mu, t=self.t, class_to_group=self.c2g, targets=self.targets,
                pi_by_group=self.pi, kappa=cfg.kappa, beta_tail=cfg.beta_tail,
                lambda_q=cfg.lambda_q, lambda_cov=cfg.lambda_cov, lambda_H=cfg.lambda_H,
                lambda_GA=cfg.lambda_GA, margin=cfg.margin)
            self._clip_step(loss)
            total += loss.detach()
            for key, v in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + v
            n += 1
        out = {f"loss_{key}": float(v) / max(n, 1) for key, v in parts_sum.items()}
        out["loss"] = float(total) / max(n, 1)
        return out

    def b2(self) -> None:
        cfg = self.cfg
        eta = self._grouped("s1")[0]
        t = self.t.detach()
        if cfg.alpha_update == "seed":
            self.alpha = update_alpha_seed(
                eta, self.s1.groups, self.alpha, self.mu, t, self.c2g, self.k, gamma=cfg.gamma,
                alpha_min=cfg.alpha_min, alpha_max=cfg.alpha_max, variant=cfg.margin,
                steps=cfg.alpha_steps)
        else:
            self.alpha = update_alpha_paper(
                eta, self.s1.groups, self.alpha, self.mu, t, self.c2g, self.k,
                alpha_min=cfg.alpha_min, alpha_max=cfg.alpha_max, variant=cfg.margin,
                steps=cfg.alpha_steps)

    def b3(self) -> dict[str, float]:
        cfg = self.cfg
        eta = self._grouped("s2")[0]
        # score mu where the model will operate: at the coverage targets under the
        # evaluation rule (see SelectiveConfig, mu_ema) unless thresholds stay as learnt
        per_group = self.targets.tolist() if cfg.calibrate_thresholds else None
        scorer = MuScorer(eta, self.s2.labels, self.s2.groups, self.alpha, self.t.detach(),
                          self.c2g, self.k, cfg.margin, group_targets=per_group)
        best, score, errs = search_mu(
            scorer, self.mu, objective=cfg.mu_objective, grid_points=cfg.mu_grid_points,
            grid_range=cfg.mu_grid_range, eg_steps=cfg.mu_eg_steps,
            eg_step_size=cfg.mu_eg_step_size)
        self.mu = (cfg.mu_ema * self.mu + (1.0 - cfg.mu_ema) * best.to(self.mu)).float()
        return {"s2_score": score, **{f"s2_error_g{g}": float(v) for g, v in enumerate(errs)}}

    def _fit_split(self) -> PreparedSplit:
        if self.crossfit or self.cfg.final_fit_split == "tunev":
            return self.full
        return self.s2

    def _grouped(self, which: str, gate_kind: str = "learned"
                 ) -> tuple[GroupedPosterior, GroupedPosterior]:
        """The posterior of ``which`` (``s1``, ``s2``, ``full`` or ``oof``: ``full`` out of
        fold) under the learned gate, the uniform-gate net (``uniform_net``) or the plain
        expert mean (``mean``), grouped in float32 (the rule steps' form) and float64 (the
        plug-in fit's), from one pass over ``[N, E, C]``; cached until the gate moves.
        ``s1``/``s2`` are rows of ``full`` (eval mode: each row's posterior is its own)."""
        key = (which, gate_kind)
        version = self.gate_version if gate_kind == "learned" else 0
        hit = self._gp_cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1], hit[2]
        if which in ("s1", "s2"):
            g32, g64 = self._grouped("full", gate_kind)
            idx = (self.idx1 if which == "s1" else self.idx2).to(self.dev)
            out = (g32.subset(idx), g64.subset(idx))
        else:
            if which == "oof":
                eta = torch.empty(len(self.full), self.full.probs.shape[2], device=self.dev)
                for (fnet, _), split, idx in zip(self.folds, (self.s2, self.s1),
                                                 (self.idx2, self.idx1), strict=True):
                    eta[idx.to(self.dev)] = gate_split(fnet, split)[1]
            elif gate_kind == "mean":
                eta = self.full.mean_probs()
            else:
                net = self.net if gate_kind == "learned" else uniform_gate(self.net)
                eta = gate_split(net, self.full)[1]
            out = (GroupedPosterior.from_posterior(eta, self.c2g, self.k),
                   GroupedPosterior.from_posterior(eta.double(), self.c2g, self.k))
            del eta
        self._gp_cache[key] = (version, *out)
        return out

    def _fit_posterior(self) -> tuple[GroupedPosterior, GroupedPosterior]:
        """The gated posterior the final rule is fit on (grouped, float32 and float64):
        on ``_fit_split()``, out of fold when cross-fitting (S2 by the S1 gate, S1 by
        the S2 gate)."""
        if self.crossfit:
            return self._grouped("oof")
        return self._grouped("full" if self._fit_split() is self.full else "s2")

    def _plugin_rule(self, eta: torch.Tensor | GroupedPosterior, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, mu = fit_plugin(eta, labels, self.c2g, self.k, self.cfg.eval_coverage,
                               self.cfg.mu_objective)
        return alpha.to(self.dev), mu.to(self.dev)

    def _uniform(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Plug-in rule of the uniform mixture on the fit split (fixed: fit once)."""
        if self._uniform_rule is None:
            fit = self._fit_split()
            gp = self._grouped("full" if fit is self.full else "s2", "mean")[1]
            self._uniform_rule = self._plugin_rule(gp, fit.labels)
        return self._uniform_rule

    def _scores(self, split: PreparedSplit, eta, alpha, mu, t, margin) -> tuple[float, float]:
        """``(mu_objective at the operating point, its area over rejection rates [0, 0.8])``
        on ``split`` with posterior ``eta [N, C]``: worst-group (or balanced) error and
        the matching area."""
        m, pred = margin_and_prediction(eta, alpha, mu, self.c2g, margin)
        z = (m - t.to(m.dtype)[self.c2g[pred]]).detach().cpu().numpy()
        acc = torch.from_numpy(z > coverage_shift(z, self.cfg.eval_coverage))
        labels, groups = split.labels.cpu(), split.groups.cpu()
        errs = group_errors(acc.unsqueeze(1), pred.cpu() != labels, groups, self.k)[0]
        curves = group_error_curves(z, pred.cpu().numpy(), labels.numpy(), groups.numpy(),
                                    self.k)
        areas = area_under_group_curves(curves)
        if self.cfg.mu_objective == "worst":
            return float(errs.max()), areas["worst_group_area"]
        return float(errs.mean()), areas["balanced_area"]

    def deploy(self) -> None:
        """Set the reported rule: gate, ``(alpha, mu)``, margin and thresholds ``t_eval``
        (module docstring, ``SelectiveConfig``)."""
        cfg, zero = self.cfg, torch.zeros(self.k, device=self.dev)
        if cfg.final_rule == "plugin":
            # the rule depends only on the gate: refit only when the gate has moved
            if self._rule_cache is None or self._rule_cache[0] != self.gate_version:
                self._rule_cache = (self.gate_version, self._plugin_rule(
                    self._fit_posterior()[1], self._fit_split().labels))
            alpha, mu = self._rule_cache[1]
            margin: MarginVariant = "plugin"
            t = zero
        else:
            alpha, mu, margin = self.alpha, self.mu, cfg.margin
            t = self.t.detach().clone()
            if cfg.calibrate_thresholds:
                gp = self._grouped("full")[0]
                m, pred = margin_and_prediction(gp, alpha, mu, self.c2g, margin)
                # a global target is the same tau for every group (SelectiveConfig)
                t = calibrate_thresholds(m, self.c2g[pred], t, self.targets.tolist(),
                                         global_target=False)
        gate_kind = "uniform" if cfg.gate == "uniform" else "learned"
        if cfg.uniform_check and gate_kind == "learned":
            # judged on data the gate did not see: S2, or all of tunev out of fold
            check = self.full if self.crossfit else self.s2
            eta_check = self._fit_posterior()[0] if self.crossfit else self._grouped("s2")[0]
            ua, umu = self._uniform()
            gated = self._scores(check, eta_check, alpha, mu, t, margin)
            mean_check = self._grouped("full" if self.crossfit else "s2", "mean")[0]
            uniform = self._scores(check, mean_check, ua, umu, zero, "plugin")
            # the learned gate stays only if it is no worse on the coverage-free area (the
            # less noisy statistic) and within uniform_check_tol at the operating point
            if not (gated[1] <= uniform[1] and gated[0] <= uniform[0] + cfg.uniform_check_tol):
                alpha, mu, margin, t, gate_kind = ua, umu, "plugin", zero, "uniform"
        learned = gate_kind == "learned" or cfg.gate == "uniform"
        # the operating point: one shift so the rule's coverage on tunev is eval_coverage
        gp = self._grouped("full", "learned" if learned else "uniform_net")[0]
        m, pred = margin_and_prediction(gp, alpha, mu, self.c2g, margin)
        z = m - t.to(m.dtype)[self.c2g[pred]]
        shift = coverage_shift(z.detach().cpu().numpy(), cfg.eval_coverage)
        self.rule_alpha, self.rule_mu = alpha.float(), mu.float()
        self.rule_margin, self.rule_gate = margin, gate_kind
        self.t_eval = (t.float() + shift).float()

    def rule_net(self) -> GatingNet:
        """The gating net of the reported rule (uniform when the check chose it)."""
        if self.rule_gate == "uniform" and self.cfg.gate != "uniform":
            return uniform_gate(self.net)
        return self.net

    def val_metrics(self) -> dict[str, float]:
        """``model_metrics(self.predictor(), bundle, "val", eval_coverage)``, with val's
        gating features computed once per run (they depend only on the temperatures)
        and its grouped posterior once per gate: the same numbers for a fraction of the
        work (a report per cycle used to re-featurise all of val)."""
        pred = self.predictor()
        logits, labels = split_tensors(self.bundle, "val", upcast=False)
        if self._val is None:
            self._val = (split_features(pred, logits), labels, torch.empty(0))
        feats = self._val[0]
        key = ("val", self.rule_gate)
        version = self.gate_version if self.rule_gate == "learned" else 0
        hit = self._gp_cache.get(key)
        if hit is None or hit[0] != version:
            gp = pred.grouped_posterior(logits, features=feats)
            self._gp_cache[key] = (version, gp, gp)
        return grouped_metrics(pred, self._gp_cache[key][1], labels,
                               coverage=self.cfg.eval_coverage)

    # ---- checkpoints -----------------------------------------------------------------
    def predictor(self):
        return predictor_from_state(
            self.rule_net(), temperatures=self.temps, alpha=self.rule_alpha, mu=self.rule_mu,
            t=self.t_eval, class_to_group=self.c2g, margin=self.rule_margin,
            top_k=self.cfg.top_k, expert_names=self.bundle.expert_names, device=self.dev)

    def checkpoint(self) -> dict:
        b, e = self.bundle, self.bundle.num_experts
        return {
            "gating_net_state_dict": {n: v.detach().cpu()
                                      for n, v in self.rule_net().state_dict().items()},
            "num_experts": e, "num_classes": b.num_classes, "num_groups": self.k,
            "gating_feature_dim": gating_feature_dim(e), "config": config_to_dict(self.cfg),
            "alpha": self.rule_alpha.detach().float().cpu(),
            "mu": self.rule_mu.detach().float().cpu(),
            "t_param": self.t_eval.detach().float().cpu(),
            "t_learned": self.t.detach().float().cpu(),
            "alpha_train": self.alpha.detach().float().cpu(),
            "mu_train": self.mu.detach().float().cpu(),
            "gate": self.rule_gate, "eval_coverage": float(self.cfg.eval_coverage),
            "pi_by_group": self.pi.detach().cpu(),
            "temperatures": {n: float(x) for n, x in zip(b.expert_names, self.temps)},
            "cycle_logs": self.logs, "mode": MODE, "margin": self.rule_margin,
            "expert_names": list(b.expert_names), "class_to_group": self.c2g.cpu(),
            "targets": self.targets.tolist(), "hidden_dims": list(self.cfg.hidden_dims),
            "dropout": self.cfg.dropout, "top_k": self.cfg.top_k,
        }

    def trainer_state(self, rng) -> dict:
        return {"net": {n: v.detach().cpu() for n, v in self.net.state_dict().items()},
                "optimizer": self.opt.state_dict(), "t": self.t.detach().cpu(),
                "alpha": self.alpha.cpu(), "mu": self.mu.cpu(), "t_eval": self.t_eval.cpu(),
                "rule": {"alpha": self.rule_alpha.cpu(), "mu": self.rule_mu.cpu(),
                         "margin": self.rule_margin, "gate": self.rule_gate},
                "rng": rng, "step": self.step, "logs": self.logs,
                "folds": [{"net": {n: v.detach().cpu() for n, v in fnet.state_dict().items()},
                           "optimizer": fopt.state_dict()} for fnet, fopt in self.folds],
                "gate_version": self.gate_version,
                "temperatures": self.temps, "config": config_to_dict(self.cfg)}

    def load_trainer_state(self, st: dict) -> None:
        self.net.load_state_dict(st["net"])
        self.opt.load_state_dict(st["optimizer"])
        optimizer_to(self.opt, self.dev)
        with torch.no_grad():
            self.t.copy_(st["t"].to(self.dev))
        self.alpha = st["alpha"].to(self.dev)
        self.mu = st["mu"].to(self.dev)
        self.t_eval = st["t_eval"].to(self.dev)
        rule = st.get("rule")
        if rule is not None:
            self.rule_alpha, self.rule_mu = rule["alpha"].to(self.dev), rule["mu"].to(self.dev)
            self.rule_margin, self.rule_gate = rule["margin"], rule["gate"]
        for (fnet, fopt), fst in zip(self.folds, st.get("folds", []), strict=True):
            fnet.load_state_dict(fst["net"])
            fopt.load_state_dict(fst["optimizer"])
            optimizer_to(fopt, self.dev)
        self.gate_version = int(st.get("gate_version", 0))
        self.logs = st["logs"]
        self.step = st["step"]
        set_rng_state(self.gen, st["rng"])


def _warm_start(run: _Run, path: str) -> list[float] | None:
    """Load a pretrain checkpoint's gate; returns its temperatures (expert order)."""
    ckpt = load_checkpoint(path)
    b = run.bundle
    if int(ckpt["num_experts"]) != b.num_experts or int(ckpt["num_classes"]) != b.num_classes:
        raise InputError(
            f"bundle has E={b.num_experts}, C={b.num_classes} but the checkpoint has "
            f"E={ckpt['num_experts']}, C={ckpt['num_classes']}", file=ckpt["_file"],
            field="pretrain_checkpoint", expected="a checkpoint trained on this bundle")
    try:
        run.net.load_state_dict(ckpt["gating_net_state_dict"])
    except RuntimeError as exc:
        raise InputError("gating net does not fit hidden_dims", file=ckpt["_file"],
                         field="hidden_dims", value=list(run.cfg.hidden_dims),
                         expected=f"the checkpoint's ({str(exc).splitlines()[0][:80]})") from None
    temps = ckpt.get("temperatures")
    if isinstance(temps, dict):
        return [float(temps.get(n, 1.0)) for n in b.expert_names]
    return None


def train_selective(config: SelectiveConfig, bundle, report: Report | None = None, *,
                    resume_from: str | Path | None = None, device="auto",
                    workdir: str | Path | None = None) -> ArgseResult:
    """Train the gate in selective mode; see the module docstring.

    Args:
        config: :class:`SelectiveConfig`.
        bundle: an ``ExpertBundle`` with ``tunev`` (split into S1/S2) and ``val``.
        report: ``report(metrics, checkpoint_dir)`` after Stage A and every cycle, with
            ``val`` metrics (``augrc``, ``aurc``, ``worst_group_error``,
            ``balanced_error``, ``coverage``, ``coverage_g{k}``, ``error_g{k}``, ...),
            ``loss`` (mean training loss of the stage) and ``cycle`` (0 = Stage A).
        resume_from: a checkpoint directory this function wrote; the run continues
            after its step, identically to an uninterrupted run (CPU, same config).
        device: ``auto|cpu|cuda``.
        workdir: where checkpoint directories go (a temporary directory if None).
    """
    check_training_bundle(bundle)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    cfg_dict = config_to_dict(config)
    k = bundle.num_groups
    config.group_targets(k)  # validates tau_groups against K early
    logits, labels = split_tensors(bundle, "tunev")
    c2g_cpu = class_to_group_tensor(bundle)
    idx1, idx2 = stratified_split(c2g_cpu[labels], config.s1_fraction, config.seed)
    state = load_state(resume_from) if resume_from is not None else None
    if state is not None:
        check_resume_config(state["config"], cfg_dict, resume_from)

    torch.manual_seed(config.seed)
    temps = [1.0] * bundle.num_experts
    if config.fit_temperature and state is None:
        # all of tunev (SelectiveConfig): one scalar per expert, as the baselines fit it
        temps = fit_temperatures(logits, labels)
    # Build the run (net init draws from the seeded global RNG), then the warm start.
    placeholder = PreparedSplit(*(torch.empty(0),) * 4)
    run = _Run(config, bundle, dev, temps, placeholder, placeholder, placeholder)
    if state is None and config.pretrain_checkpoint:
        warm = _warm_start(run, config.pretrain_checkpoint)
        if warm is not None:
            run.temps = warm
    if state is not None:
        run.temps = list(state["temperatures"])
    full = prepare_split(logits, labels, run.temps, c2g_cpu, config.top_k, dev)
    run.full = full
    run.s1, run.s2 = full.subset(idx1.to(dev)), full.subset(idx2.to(dev))
    run.idx1, run.idx2 = idx1, idx2
    del logits
    if state is not None:
        run.load_trainer_state(state)

    writer = CheckpointWriter(workdir)
    last_dir = Path(resume_from) if resume_from is not None else None
    metrics: dict[str, float] = dict(run.logs[-1].get("val", {})) if run.logs else {}

    def finish_step(step: int, log: dict) -> None:
        nonlocal last_dir, metrics
        run.step = step
        run.deploy()
        log.update({"cycle": step, "alpha": run.rule_alpha.tolist(), "mu": run.rule_mu.tolist(),
                    "t": run.t_eval.tolist(), "t_learned": run.t.detach().tolist(),
                    "alpha_train": run.alpha.tolist(), "mu_train": run.mu.tolist(),
                    "gate": run.rule_gate, "rule_margin": run.rule_margin})
        if report is not None or step == config.cycles:
            # val metrics only where someone reads them (a report, the result): the
            # loop itself never looks at val; they are taken at the operating point
            metrics = run.val_metrics()
            metrics["loss"] = log["loss"]
            metrics["cycle"] = float(step)
            log["val"] = dict(metrics)
        run.logs.append(log)
        rng = rng_state(run.gen)
        if report is not None or step == config.cycles:
            written = writer.write(f"cycle_{step:04d}", SELECTIVE_FILE, run.checkpoint(),
                                   run.trainer_state(rng), run.logs)
            last_dir = written
            if report is not None:
                report(dict(metrics), str(written))
                writer.reported(written)
                set_rng_state(run.gen, rng)

    train_gate = config.gate == "learned"
    if run.step < 0:
        losses = [run.stage_a_epoch() for _ in range(config.stageA_epochs if train_gate else 0)]
        run.init_thresholds()
        finish_step(0, {"stage": "A", "loss": losses[-1] if losses else float("nan")})
    for cycle in range(run.step + 1, config.cycles + 1):
        parts: dict[str, float] = {}
        # a proper-scoring-rule gate is trained in Stage A only (SelectiveConfig.gate_loss)
        for _ in range(config.b1_epochs if train_gate and not run.nll_mode else 0):
            parts = run.b1_epoch()
        if run.nll_mode and run.logs:
            # no gate training in the cycles: the reported loss stays Stage A's
            parts = {"loss": run.logs[0]["loss"]}
        run.b2()
        b3 = run.b3()
        log = {"stage": "B", "loss": parts.get("loss", float("nan")), **parts, **b3}
        finish_step(cycle, log)
    if last_dir is None:  # only reachable if no step ran and nothing was resumed
        raise ValueError(f"train_selective: no cycle was run and there is nothing to resume "
                         f"from (cycles={config.cycles})")
    return ArgseResult(
        config=config, metrics=metrics, checkpoint_dir=str(last_dir),
        checkpoint_file=str(Path(last_dir) / SELECTIVE_FILE),
        temperatures=dict(zip(bundle.expert_names, map(float, run.temps))), logs=run.logs,
        alpha=run.rule_alpha.tolist(), mu=run.rule_mu.tolist(), t=run.t_eval.tolist())


__all__ = ["MODE", "train_selective"]

"""After each backward pass, on the device: PSNR against the observation, backtracking's decision, output
averaging, PSNRs against the ground truth and the history row (a part of DIPTask: tasks/base.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import history


@dataclass
class Bookkept:
    """What after_backward makes of one iteration of one run (tensors on the device)."""

    out: torch.Tensor  # the raw output, detached, float
    output: torch.Tensor  # the running result: the averaged output with averaging on, else `out`
    psnr_gt: torch.Tensor | None  # PSNR of `out` against the ground truth (None without one)
    psnr_avg: torch.Tensor | None  # PSNR of `output` against the ground truth (None without one)
    row: torch.Tensor  # the history row (history.row: its columns by name)
    bad: torch.Tensor | None  # backtracking's decision: restore the pre-step state after the step (None: off)


class Bookkeeping:
    """DIPTask's per-iteration bookkeeping; it reads the task's buffers and backtracking settings."""

    @torch.no_grad()
    def after_backward(self, out: torch.Tensor, loss: torch.Tensor, a_out: torch.Tensor, first: bool) -> Bookkept:
        """The bookkeeping between backward and the optimizer step, all on the device: PSNR against the
        observation, backtracking's decision (`bad`: restore this iteration's pre-step state after the step; the
        caller saves and restores it), output averaging, PSNRs against the ground truth, the history row."""
        out = out.detach().float()
        psnr_obs = self.fit_psnr(a_out.detach())
        bad = None
        if self.backtracking:  # a collapse: PSNR against the observation fell > drop dB below its best (or NaN)
            # (reference mode: below the last checked good iterate's, as the notebooks' psnr_last)
            bad = ~(psnr_obs >= self.best_good_psnr - self.backtrack_drop_db)
            self._unchanged = bad  # where the good iterate's PSNR (and reference mode's snapshot) stay as they are
            checked = self._checked()
            if checked is not None:
                bad = checked & bad
                self._unchanged = ~checked | bad
                self._check_count += ~bad
            kept = psnr_obs if self.backtrack_mode == "reference" else torch.maximum(self.best_good_psnr, psnr_obs)
            self.best_good_psnr.copy_(torch.where(self._unchanged, self.best_good_psnr, kept))
            self.n_backtracks += bad
        output = out
        if self.exp_weight > 0:
            new_avg = out if first else self.out_avg * self.exp_weight + out * (1 - self.exp_weight)
            # reference mode: the average took the collapsed output before the check, as in the notebook
            skip_avg = bad is not None and self.backtrack_mode == "clean"
            self.out_avg.copy_(torch.where(bad, self.out_avg, new_avg) if skip_avg else new_avg)
            output = self.out_avg
        psnr_gt = psnr_avg = None
        if self.clean is not None:
            psnr_gt = self.gt_psnr(out)
            psnr_avg = self.gt_psnr(self.out_avg) if self.exp_weight > 0 else psnr_gt
        self.last_out.copy_(out)
        gt = {} if psnr_gt is None else {history.PSNR_GT: psnr_gt, history.PSNR_GT_AVG: psnr_avg}
        row = history.row(**{history.LOSS: loss.detach(), history.PSNR_FIT: psnr_obs}, **gt)
        return Bookkept(out, output, psnr_gt, psnr_avg, row, bad)

    def _checked(self) -> torch.Tensor | None:
        """Whether this iteration's PSNR is checked (0-d bool on the device): every backtrack_check_every-th and
        not every backtrack_skip_every-th, counted as the reference's `i` (which a backtracked iteration leaves
        unchanged). None with the defaults: every iteration, and no operation spent on it."""
        if self.backtrack_check_every == 1 and self.backtrack_skip_every == 0:
            return None
        if self._check_count is None:  # derived, not saved: iteration - backtracks, without a host read
            self._check_count = self.iteration - self.n_backtracks.clone()
        i = self._check_count
        checked = i % self.backtrack_check_every == 0
        if self.backtrack_skip_every:
            checked = checked & (i % self.backtrack_skip_every != 0)
        return checked

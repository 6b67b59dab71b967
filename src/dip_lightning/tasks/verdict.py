"""Whether a finished run's result is a restoration at all (`collapse`), judged against the observation alone. A
part of DIPTask (tasks/base.py)."""

from __future__ import annotations

import math

import torch

from .. import history


class Verdict:
    """DIPTask's collapse verdict; a task whose fit PSNR says nothing (feature inversion) sets judges_fit = False."""

    #: runs shorter than this are not judged by `collapse` (a smoke test's first iterations prove nothing)
    JUDGED_AFTER = 100
    #: whether PSNR against the observation measures the fit (not for feature inversion: its target is features)
    judges_fit = True
    #: the least gain (dB, best iterate against the first output) of a run that fitted its observation at all
    FITTED_DB = 3.0

    @torch.no_grad()
    def collapse(self, result: torch.Tensor) -> str | None:
        """Why `result` is not a restoration, judged against the observation (no ground truth needed); None if it
        is one. A collapsed run: the result is not finite; or the last tenth of the run fits the observation
        `backtrack_drop_db` worse than its best iterate did (a divergence that stayed); or no iterate fitted it
        FITTED_DB better than the untrained net's first output (it never worked); or the result fits it no better
        than that first output."""
        result = result.to(self.observed.device)
        loss, a_result = self.operator.loss(result, self.observed)
        if not torch.isfinite(loss):
            return f"the result's loss against the observation is {float(loss)}"
        fit = [v for v in self.history[history.PSNR_FIT] if math.isfinite(v)]
        if not self.judges_fit or len(self.history[history.PSNR_FIT]) < self.JUDGED_AFTER or not fit:
            return None
        tail = sorted(self.history[history.PSNR_FIT][-max(len(fit) // 10, 1) :])
        median, best = tail[len(tail) // 2], max(fit)
        if not median >= best - self.backtrack_drop_db:  # NaN counts as collapsed
            return (
                f"over the last tenth of the run the output fitted the observation at {median:.2f} dB "
                f"(median PSNR against it), {best - median:.1f} dB below the best iterate's {best:.2f} dB"
            )
        start, now = self.history[history.PSNR_FIT][0], float(self.fit_psnr(a_result))
        if best - start < self.FITTED_DB:
            return (
                f"it never fitted the observation: its best iterate reached {best:.2f} dB against it, "
                f"{best - start:.1f} dB above the untrained net's first output ({start:.2f} dB), where DIP gains "
                f"far more in {self.JUDGED_AFTER} iterations (a learning rate far too low fits nothing either)"
            )
        if now <= start:
            return (
                f"the result fits the observation at {now:.2f} dB, no better than the untrained net's first "
                f"output ({start:.2f} dB)"
            )
        return None

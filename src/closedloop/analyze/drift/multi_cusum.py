"""The engine shared by the multi-chart CUSUM detectors: a reference, K charts, one alarm.

The post-change value is unknown, so a detector runs one CUSUM chart per candidate shift
(a grid such as drops of 5, 10 and 20 points) side by side and alarms when any chart crosses
its own threshold: Tartakovsky's *multichart CUSUM*, whose detection delay is within a small
factor of the CUSUM that knows the true shift (Lorden's optimal bound) whenever the true shift
is near a grid point.

Each chart ``k`` adds the log-likelihood ratio of its shift, ``a_k + b_k * x`` (linear in
``x`` for both the Bernoulli and the Gaussian model), and restarts at zero when it falls
below. The pre-change parameters come from a *reference*: the first ``warmup`` observations,
then every observation seen while all charts sit at zero. While any chart is above zero the
observations are held apart (a chart above zero is the start of a possible change) and join
the reference only when every chart is back at zero. So the reference keeps growing on a
stationary stream and freezes at the start of a change, and the last time the alarming chart
left zero is the estimated change point (the CUSUM's maximum-likelihood change point).
After an alarm the detector starts over: the next ``warmup`` observations form the new
reference.

Thresholds split the false-alarm budget between the charts: chart ``k`` gets a share
``w_k`` and alone must have an average run length of ``arl0 / w_k``, which by Wald's
approximation of the CUSUM run length, ``ARL0 ~ exp(h) / KL``, gives
``b_k = log(arl0 * KL_k / w_k)``, where ``KL_k`` is the Kullback-Leibler divergence of the
pre-change from the chart's post-change distribution. A chart's delay is about ``h / KL``,
so the ``log(1 / w_k)`` it pays over the CUSUM that knows the shift costs most, relatively,
to small shifts (small ``b_k``). Shares ``w_k ~ KL_k ** -TILT`` with ``TILT = 0.2`` equalise
that relative cost across the default charts at ``arl0 = 10_000``: drops of 5, 10 and 20
points from 0.8 get 42, 33 and 25 % (``TILT = 0`` would split equally).

That holds for a known pre-change value. An estimate from ``n`` observations is off by an
error of variance ``v / n`` (``v`` the variance of one observation), which shifts the drift
of a chart tuned to a shift ``d`` by a factor ``1 - 2 * error / d`` and, averaged over the
error, multiplies its false-alarm rate by about ``exp(2 * h**2 * v / (n * d**2))``. So the
threshold solves ``h - c * h**2 = b_k`` with ``c = v / (n * d**2)`` (half that Gaussian
value, which measured too conservative: fewer false alarms early in a stream than late),
that is ``h_k = 2 * b_k / (1 + sqrt(1 - 4 * c * b_k)) + offset``. A chart whose shift the
reference cannot resolve yet (``4 * c * b_k >= 1``, about ``n < 4 * v * b_k / d**2``
observations) stays off: a low-volume segment watches only large shifts, then smaller ones
as its reference grows. With this the false-alarm rate is roughly even over a stream's life
instead of crowding right after the warm-up.

**Bursty feedback.** Observations that come in correlated bursts (one user's several thumbs in
a session) carry less information than their count: the variance of their sums is inflated
by a factor ``dispersion`` (for sessions of size ``m`` and intra-session correlation
``rho``, about ``1 + rho * (E[m**2] / E[m] - 1)``). Every chart divides its log-likelihood
ratio by ``dispersion``, which restores the false-alarm rate at the cost of a delay longer by
about the same factor, and the intervals widen as ``n / dispersion`` observations would.
Sparse feedback needs nothing: the clock is the observation.

``offset`` absorbs what the approximations leave out (the overshoot, the correlation of the
charts); each detector ships a default measured by simulation (``bench/drift_eval.py``) and
:func:`~closedloop.analyze.drift.calibrate` refits it.
"""

from __future__ import annotations

import abc
import math

from closedloop.analyze.drift.base import Change, ChangeDetector, Estimate

__all__ = ["MIN_THRESHOLD", "TILT", "MultiCusum"]

MIN_THRESHOLD = 1.0
"""Floor of every chart threshold (reached only with tiny ``arl0`` or shifts)."""

TILT = 0.2
"""Chart ``k`` gets a share of the false-alarm budget proportional to ``KL_k ** -TILT``."""

_OFF = (-1.0, 0.0, math.inf)  # a chart that is off: stays at zero, never alarms


class MultiCusum(ChangeDetector):
    """Multichart CUSUM over a reference; subclasses supply the model of one chart.

    Subclasses call :meth:`_setup` from their constructor with the number of charts and
    implement :meth:`_charts` (chart coefficients and thresholds from the reference sums)
    and :meth:`_estimate` (an estimate with its interval from sums).
    """

    warmup: int
    arl0: float
    offset: float
    dispersion: float

    def _configure(
        self,
        *,
        arl0: float,
        warmup: int,
        min_warmup: int,
        direction: str,
        offset: float,
        dispersion: float,
        magnitudes: tuple[float, ...],
    ) -> tuple[float, ...]:
        """Check and store the parameters every multichart CUSUM shares, set up its state,
        and return the signed shift of each chart (``magnitudes`` per ``direction``)."""
        if not (isinstance(arl0, int | float) and math.isfinite(arl0) and arl0 > 1):
            raise ValueError(f"arl0 must be a finite number above 1, got {arl0!r}")
        if not (isinstance(warmup, int) and warmup >= min_warmup):
            raise ValueError(f"warmup must be an integer of at least {min_warmup}, got {warmup!r}")
        if direction not in ("down", "up", "both"):
            raise ValueError(f"direction must be 'down', 'up' or 'both', got {direction!r}")
        if not (isinstance(offset, int | float) and math.isfinite(offset)):
            raise ValueError(f"offset must be a finite number, got {offset!r}")
        if not (isinstance(dispersion, int | float) and 1 <= dispersion < math.inf):
            raise ValueError(
                f"dispersion must be a finite number of at least 1, got {dispersion!r}"
            )
        self.arl0 = float(arl0)
        self.warmup = warmup
        self.offset = float(offset)
        self.dispersion = float(dispersion)
        signs = {"down": (-1.0,), "up": (1.0,), "both": (-1.0, 1.0)}[direction]
        signed = tuple(sign * m for sign in signs for m in magnitudes)
        self._setup(len(signed))
        return signed

    def _setup(self, n_charts: int) -> None:
        self._k = n_charts
        self._n = 0  # observations seen since creation
        self._ref = [0.0, 0.0, 0.0]  # reference: count, sum, sum of squares
        self._pending = [0.0, 0.0, 0.0]  # held apart while a chart is above zero
        self._stat = [0.0] * n_charts
        self._start = [0] * n_charts  # index of the first observation of each excursion
        self._exc = [[0.0, 0.0, 0.0] for _ in range(n_charts)]  # sums since then
        self._coef: list[tuple[float, float, float]] = []  # (a, b, threshold); empty = stale
        self._alarm = -1  # chart that raised the last alarm
        self._change: Change | None = None

    @abc.abstractmethod
    def _models(
        self, n: float, total: float, total_sq: float
    ) -> list[tuple[float, float, float, float] | None]:
        """Per chart, from the reference sums: ``(a_k, b_k, KL_k, c_k)`` (the log-likelihood
        ratio is ``a_k + b_k * x``), or ``None`` for a chart whose shift has no room."""

    def _charts(self, n: float, total: float, total_sq: float) -> list[tuple[float, float, float]]:
        """``(a_k, b_k, h_k)`` per chart; a chart that is off is ``(-1, 0, inf)``."""
        models = self._models(n, total, total_sq)
        weights = [0.0 if m is None else m[2] ** -TILT for m in models]
        norm = sum(weights)
        charts = []
        for model, weight in zip(models, weights, strict=True):
            if model is None:
                charts.append(_OFF)
                continue
            a, b, kl, c = model
            h = self._threshold(kl, c, weight / norm)
            charts.append((a, b, h) if h < math.inf else _OFF)
        return charts

    @abc.abstractmethod
    def _estimate(self, n: float, total: float, total_sq: float) -> Estimate:
        """The estimate of the monitored parameter from sums, with its interval."""

    def _check(self, x: float) -> float:
        """Validate one observation (subclasses narrow the domain)."""
        if not math.isfinite(x):
            raise ValueError(f"x must be a finite number, got {x!r}")
        return x

    def _threshold(self, kl: float, c: float, share: float) -> float:
        """Threshold of a chart with divergence ``kl``, reference-error ratio ``c``
        (``v / (n * d**2)``) and ``share`` of the false-alarm budget; ``inf`` when the
        reference cannot resolve the shift yet."""
        base = math.log(self.arl0 * kl / share)
        disc = 1.0 - 4.0 * c * base
        if disc <= 0.0:
            return math.inf
        return max(2.0 * base / (1.0 + math.sqrt(disc)) + self.offset, MIN_THRESHOLD)

    @property
    def change(self) -> Change | None:
        return self._change

    @property
    def n_reference(self) -> int:
        """Observations in the reference (the pre-change estimate)."""
        return int(self._ref[0])

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The threshold of each chart now (``inf``: off); empty during the warm-up."""
        ref = self._ref
        if ref[0] < self.warmup:
            return ()
        return tuple(h for _, _, h in self._charts(ref[0], ref[1], ref[2]))

    @property
    def statistic(self) -> float:
        """The largest chart statistic minus its threshold (alarm at 0 or above)."""
        if not self._coef:
            return -math.inf
        return max(s - c[2] for s, c in zip(self._stat, self._coef, strict=True))

    def _restart(self) -> None:
        """After an alarm the detector learns the level afresh, from the next ``warmup``
        observations (the observations that raised the alarm were selected for looking low,
        so reusing them would bias the new reference)."""
        self._ref = [0.0, 0.0, 0.0]
        self._pending = [0.0, 0.0, 0.0]
        self._stat = [0.0] * self._k
        self._exc = [[0.0, 0.0, 0.0] for _ in range(self._k)]
        self._coef = []

    def update(self, x: float) -> None:
        x = self._check(x)
        if self._drift_detected:
            self._drift_detected = False
            self._restart()
        i = self._n
        self._n += 1
        ref = self._ref
        if ref[0] < self.warmup:
            ref[0] += 1.0
            ref[1] += x
            ref[2] += x * x
            self._coef = []
            return
        if not self._coef:
            self._coef = self._charts(ref[0], ref[1], ref[2])
        stat, exc = self._stat, self._exc
        above = False
        best, alarm = 0.0, -1
        for k, (a, b, h) in enumerate(self._coef):
            s = stat[k] + (a + b * x)
            if s <= 0.0:
                stat[k] = 0.0
                continue
            if stat[k] == 0.0:
                self._start[k] = i
                exc[k] = [0.0, 0.0, 0.0]
            stat[k] = s
            e = exc[k]
            e[0] += 1.0
            e[1] += x
            e[2] += x * x
            above = True
            if s - h >= best:
                best, alarm = s - h, k
        pending = self._pending
        pending[0] += 1.0
        pending[1] += x
        pending[2] += x * x
        if not above:
            ref[0] += pending[0]
            ref[1] += pending[1]
            ref[2] += pending[2]
            self._pending = [0.0, 0.0, 0.0]
            self._coef = []
        if alarm >= 0:
            e = exc[alarm]
            self._alarm = alarm
            self._drift_detected = True
            self._change = Change(
                change_point=self._start[alarm],
                detected_at=i,
                before=self._estimate(ref[0], ref[1], ref[2]),
                after=self._estimate(e[0], e[1], e[2]),
            )

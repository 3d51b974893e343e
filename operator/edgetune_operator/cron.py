"""A small 5-field cron parser (minute hour day-of-month month day-of-week, UTC) and
next-tick computation, for scheduled EdgeBenchmarks. Standard library only.

Fields accept `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and lists `a,b`.
Day-of-week 0-7 (0 and 7 are Sunday). As in Vixie cron, when both day-of-month and
day-of-week are restricted, a day matching either runs. Macros: @yearly @annually
@monthly @weekly @daily @hourly.
"""

from __future__ import annotations

import datetime as dt

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@hourly": "0 * * * *"}
BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
NAMES = ["minute", "hour", "day-of-month", "month", "day-of-week"]


class CronError(ValueError):
    pass


def _field(text: str, lo: int, hi: int, name: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, _, s = part.partition("/")
            if not s.isdigit() or int(s) == 0:
                raise CronError(f"{name}: bad step {s!r}")
            step = int(s)
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            x, _, y = part.partition("-")
            if not (x.isdigit() and y.isdigit()):
                raise CronError(f"{name}: bad range {part!r}")
            a, b = int(x), int(y)
        elif part.isdigit():
            a = b = int(part)
            if step != 1:
                b = hi
        else:
            raise CronError(f"{name}: bad value {part!r}")
        if a < lo or b > hi or a > b:
            raise CronError(f"{name}: {part!r} out of range {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return out


class Cron:
    def __init__(self, expr: str):
        text = MACROS.get(expr.strip(), expr.strip())
        fields = text.split()
        if len(fields) != 5:
            raise CronError(f"a cron schedule has 5 fields, got {len(fields)}: {expr!r}")
        self.expr = expr
        self.minutes, self.hours, self.doms, self.months, dows = (
            _field(f, lo, hi, n) for f, (lo, hi), n in zip(fields, BOUNDS, NAMES))
        self.dows = {d % 7 for d in dows}
        self.dom_any = fields[2] == "*"
        self.dow_any = fields[4] == "*"

    def _day_ok(self, d: dt.date) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.doms
        dow = (d.isoweekday() % 7) in self.dows
        if self.dom_any and self.dow_any:
            return True
        if self.dom_any:
            return dow
        if self.dow_any:
            return dom
        return dom or dow

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first tick strictly after t (UTC)."""
        t = t.astimezone(dt.timezone.utc).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        day = t.date()
        for _ in range(366 * 5):
            if self._day_ok(day):
                start_h = t.hour if day == t.date() else 0
                for h in sorted(self.hours):
                    if h < start_h:
                        continue
                    start_m = t.minute if (day == t.date() and h == t.hour) else 0
                    for m in sorted(self.minutes):
                        if m >= start_m:
                            return dt.datetime(day.year, day.month, day.day, h, m, tzinfo=dt.timezone.utc)
            day += dt.timedelta(days=1)
        raise CronError(f"{self.expr!r} never fires")

"""Grafana dashboard JSON (the classic model, schema version 42) from plain Python.

Only the parts the dashboards use: rows, time series, stats and tables, Prometheus
targets, and the ``datasource`` and query variables. Panels flow left to right on
Grafana's 24-column grid and wrap.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["DS", "SCHEMA_VERSION", "Board", "Target"]

#: The last schema version of Grafana's classic dashboard model (Grafana 12).
SCHEMA_VERSION = 42
DS: Dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
JSON = Dict[str, Any]

#: ``(expr, legend)``; an empty legend lets Grafana name the series.
Target = Tuple[str, str]


def _targets(targets: Sequence[Target], instant: bool = False) -> List[JSON]:
    out = []
    for i, (expr, legend) in enumerate(targets):
        t: JSON = {"datasource": DS, "editorMode": "code", "expr": expr,
                   "legendFormat": legend or "__auto", "refId": chr(ord("A") + i)}
        if instant:
            t.update(instant=True, range=False, format="table")
        else:
            t.update(instant=False, range=True)
        out.append(t)
    return out


class Board:
    """A dashboard being built: add rows and panels, then :meth:`json`."""

    def __init__(self, uid: str, title: str, description: str, tags: Sequence[str]) -> None:
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels: List[JSON] = []
        self.variables: List[JSON] = [{
            "name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
            "regex": "", "options": [], "includeAll": False, "multi": False,
        }]
        self._x = self._y = self._row_h = 0

    # -- variables ---------------------------------------------------------------------

    def variable(self, name: str, query: str, label: Optional[str] = None) -> None:
        """A multi-value query variable over ``label_values(...)``, "All" meaning ``.*``."""
        self.variables.append({
            "name": name, "label": label or name, "type": "query", "datasource": DS,
            "definition": query,
            "query": {"qryType": 1, "query": query,
                      "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "sort": 1, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {}, "options": [], "regex": "", "hide": 0,
        })

    # -- layout ------------------------------------------------------------------------

    def _place(self, w: int, h: int) -> JSON:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def row(self, title: str) -> None:
        """Start a new row of panels under a title."""
        if self._x:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": len(self.panels) + 1, "gridPos": self._place(24, 1)})
        self._x, self._y, self._row_h = 0, self._y + 1, 0

    def _panel(self, kind: str, title: str, description: str, w: int, h: int) -> JSON:
        panel: JSON = {"type": kind, "title": title, "description": description,
                       "id": len(self.panels) + 1, "datasource": DS,
                       "gridPos": self._place(w, h)}
        self.panels.append(panel)
        return panel

    # -- panels ------------------------------------------------------------------------

    def timeseries(self, title: str, description: str, targets: Sequence[Target],
                   unit: str = "short", w: int = 8, h: int = 8, stack: bool = False,
                   max_: Optional[float] = None) -> None:
        """A time series panel."""
        p = self._panel("timeseries", title, description, w, h)
        defaults: JSON = {
            "unit": unit, "min": 0,
            "custom": {"drawStyle": "line", "lineWidth": 1,
                       "fillOpacity": 20 if stack else 0, "showPoints": "never",
                       "spanNulls": False, "axisSoftMin": 0,
                       "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
            "color": {"mode": "palette-classic"},
        }
        if max_ is not None:
            defaults["max"] = max_
        p["fieldConfig"] = {"defaults": defaults, "overrides": []}
        p["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                       "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        p["targets"] = _targets(targets)

    def stat(self, title: str, description: str, expr: str, unit: str = "short",
             red_above: Optional[float] = None, red_below: Optional[float] = None,
             w: int = 4, h: int = 4) -> None:
        """A single number, red past a threshold."""
        p = self._panel("stat", title, description, w, h)
        steps: List[JSON] = [{"color": "green", "value": None}]
        if red_above is not None:
            steps.append({"color": "red", "value": red_above})
        if red_below is not None:
            steps = [{"color": "red", "value": None}, {"color": "green", "value": red_below}]
        p["fieldConfig"] = {"defaults": {"unit": unit, "thresholds": {
            "mode": "absolute", "steps": steps}, "color": {"mode": "thresholds"}},
            "overrides": []}
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                          "values": False},
                        "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
                        "orientation": "auto", "textMode": "auto",
                        "showPercentChange": False}
        p["targets"] = _targets([(expr, "")])

    def table(self, title: str, description: str, expr: str, columns: Sequence[str],
              w: int = 12, h: int = 6) -> None:
        """A table of the label values of the series of ``expr``, one series a row."""
        p = self._panel("table", title, description, w, h)
        p["fieldConfig"] = {"defaults": {}, "overrides": []}
        p["options"] = {"showHeader": True, "cellHeight": "sm"}
        p["targets"] = _targets([(expr, "")], instant=True)
        p["transformations"] = [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True},
            "indexByName": {c: i for i, c in enumerate(columns)}}}]

    # -- output ------------------------------------------------------------------------

    def json(self) -> JSON:
        """The dashboard, ready for ``json.dumps`` and Grafana's import."""
        return {
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts", "type": "dashboard"}]},
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "id": None,
            "links": [{"asDropdown": True, "includeVars": True, "keepTime": True,
                       "tags": [self.tags[0]], "targetBlank": False, "title": "jobmetrics",
                       "type": "dashboards"}],
            "panels": self.panels,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "tags": list(self.tags),
            "templating": {"list": self.variables},
            "time": {"from": "now-6h", "to": "now"},
            "timepicker": {},
            "timezone": "",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
        }

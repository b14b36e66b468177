"""Generate deploy/grafana/dashboards/detect-serving.json (run after changing a panel).

python scripts/make_dashboard.py            # rewrite the dashboard
python scripts/make_dashboard.py --check    # exit 1 when the committed dashboard is out of date
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "deploy/grafana/dashboards/detect-serving.json"
# The datasource is a dashboard variable, so the board imports into any Grafana whatever its
# Prometheus datasource is called; $instance picks replicas (pods) in a multi-replica setup.
DS = {"type": "prometheus", "uid": "${datasource}"}
INST = 'instance=~"$instance"'
SEL = f'model=~"$model",precision=~"$precision",{INST}'
MODEL_SEL = f'model=~"$model",{INST}'
RATE = "$__rate_interval"


def quantiles(metric: str, by: str = "precision") -> list[tuple[str, str]]:
    return [
        (
            f"p{q} {{{{{by}}}}}",
            f"histogram_quantile(0.{q}, sum by (le, {by}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
        )
        for q in ("50", "95", "99")
    ]


def error_ratio(first_digit: str) -> str:
    errors = f'sum(rate(detect_requests_total{{{SEL},status=~"{first_digit}.."}}[{RATE}]))'
    total = f"clamp_min(sum(rate(detect_requests_total{{{SEL}}}[{RATE}])), 1e-9)"
    return f"(({errors} / {total}) or vector(0))"


ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    (
        "Traffic",
        [
            {
                "title": "Requests / s by precision",
                "unit": "reqps",
                "targets": [
                    (
                        "{{precision}} {{status}}",
                        f"sum by (precision, status) (rate(detect_requests_total{{{SEL}}}[{RATE}]))",
                    )
                ],
            },
            {
                "title": "Images / s by precision",
                "unit": "short",
                "targets": [
                    (
                        "{{precision}}",
                        f"sum by (precision) (rate(detect_images_total{{{SEL}}}[{RATE}]))",
                    )
                ],
            },
            {
                "title": "Requested vs selected precision",
                "unit": "reqps",
                "targets": [
                    (
                        "{{requested}} -> {{selected}}",
                        "sum by (requested, selected) (rate(detect_precision_selected_total"
                        f'{{{MODEL_SEL},selected=~"$precision"}}[{RATE}]))',
                    )
                ],
            },
        ],
    ),
    (
        "Latency",
        [
            {
                "title": "Request latency (p50/p95/p99) by precision",
                "unit": "s",
                "targets": quantiles("detect_request_duration_seconds"),
            },
            {
                "title": "Decode + letterbox time (p50/p95/p99)",
                "unit": "s",
                "targets": quantiles("detect_preprocess_duration_seconds"),
            },
            {
                "title": "Postprocess time (p50/p95/p99)",
                "unit": "s",
                "targets": quantiles("detect_postprocess_duration_seconds"),
            },
        ],
    ),
    (
        "Batching",
        [
            {
                "title": "Batch size distribution",
                "unit": "short",
                "type": "heatmap",
                "targets": [
                    ("{{le}}", f"sum by (le) (rate(detect_batch_size_bucket{{{SEL}}}[{RATE}]))")
                ],
                "format": "heatmap",
            },
            {
                "title": "Mean batch size by precision",
                "unit": "short",
                "targets": [
                    (
                        "{{precision}}",
                        f"sum by (precision) (rate(detect_batch_size_sum{{{SEL}}}[{RATE}])) / "
                        f"sum by (precision) (rate(detect_batch_size_count{{{SEL}}}[{RATE}]))",
                    )
                ],
            },
            {
                "title": "Queue depth / capacity",
                "unit": "short",
                "targets": [
                    ("depth {{precision}}", f"sum by (precision) (detect_queue_depth{{{SEL}}})"),
                    (
                        "capacity {{precision}}",
                        f"sum by (precision) (detect_queue_capacity{{{SEL}}})",
                    ),
                ],
            },
            {
                "title": "Queue wait (p50/p95/p99)",
                "unit": "s",
                "targets": quantiles("detect_queue_wait_seconds"),
            },
        ],
    ),
    (
        "Engines",
        [
            {
                "title": "Inference time per batch (p50/p95/p99)",
                "unit": "s",
                "targets": quantiles("detect_inference_duration_seconds"),
            },
            {
                "title": "Loaded variants",
                "type": "table",
                "targets": [
                    (
                        "",
                        f"max by (model, precision, backend, device) (detect_engine_info{{{SEL}}})",
                    )
                ],
                "format": "table",
            },
            {
                "title": "Variant ready (1 = serving)",
                "unit": "short",
                "targets": [
                    ("{{precision}}", f"max by (precision) (detect_engine_ready{{{SEL}}})")
                ],
            },
            {
                "title": "In-flight requests",
                "unit": "short",
                "targets": [
                    ("{{model}}", f"sum by (model) (detect_inflight_requests{{{MODEL_SEL}}})")
                ],
            },
        ],
    ),
    (
        "Errors and rejections",
        [
            {
                # "or vector(0)": with no error series (a healthy server) the ratio reads 0,
                # not "No data"; clamp_min keeps an idle server from dividing by zero.
                "title": "Error ratios (5xx, 4xx / all)",
                "unit": "percentunit",
                "targets": [(f"{cls} ratio", error_ratio(cls[0])) for cls in ("5xx", "4xx")],
            },
            {
                "title": "Responses by status",
                "unit": "reqps",
                "targets": [
                    (
                        "{{status}}",
                        f"sum by (status) (rate(detect_requests_total{{{SEL}}}[{RATE}]))",
                    )
                ],
            },
            {
                "title": "Rejections by reason",
                "unit": "reqps",
                "targets": [
                    (
                        "{{reason}}",
                        f"sum by (reason) (rate(detect_rejected_total{{{MODEL_SEL}}}[{RATE}]))",
                    )
                ],
            },
        ],
    ),
    (
        "Precision audit (sampled requests re-run in FP32)",
        [
            {
                "title": "Live agreement with FP32 vs the build budget",
                "unit": "percentunit",
                "targets": [
                    ("live {{precision}}", f"max by (precision) (detect_audit_agreement{{{SEL}}})"),
                    (
                        "budget {{precision}}",
                        f"max by (precision) (detect_audit_agreement_budget{{{SEL}}})",
                    ),
                ],
            },
            {
                "title": "Shadow runs / s, and drops by reason",
                "unit": "ops",
                "targets": [
                    (
                        "run {{precision}}",
                        f"sum by (precision) (rate(detect_audit_samples_total{{{SEL}}}[{RATE}]))",
                    ),
                    (
                        "dropped {{precision}} {{reason}}",
                        "sum by (precision, reason) "
                        f"(rate(detect_audit_dropped_total{{{SEL}}}[{RATE}]))",
                    ),
                ],
            },
            {
                "title": "Samples in the agreement window; demoted from auto (1)",
                "unit": "short",
                "targets": [
                    (
                        "samples {{precision}}",
                        f"max by (precision) (detect_audit_window_samples{{{SEL}}})",
                    ),
                    (
                        "demoted {{precision}}",
                        f"max by (precision) (detect_audit_demoted{{{SEL}}})",
                    ),
                ],
            },
        ],
    ),
    (
        "GPU",
        [
            {
                "title": "GPU memory used",
                "unit": "percentunit",
                "targets": [
                    (
                        "{{gpu}} {{name}}",
                        f"max by (gpu, name) (detect_gpu_memory_used_bytes{{{INST}}} / detect_gpu_memory_total_bytes{{{INST}}})",
                    )
                ],
            },
            {
                "title": "GPU utilisation",
                "unit": "percentunit",
                "targets": [
                    (
                        "{{gpu}} {{name}}",
                        f"max by (gpu, name) (detect_gpu_utilization_ratio{{{INST}}})",
                    )
                ],
            },
        ],
    ),
]


# Panel-type options for current Grafana: a heatmap of pre-bucketed Prometheus histograms must not
# re-bucket (calculate: false); the variants table shows labels only (the value is always 1).
OPTIONS: dict[str, dict[str, Any]] = {
    "timeseries": {"legend": {"displayMode": "list", "placement": "bottom"}},
    "heatmap": {
        "calculate": False,
        "yAxis": {"axisPlacement": "left", "unit": "short"},
        "cellGap": 1,
        "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
        "legend": {"show": True},
        "tooltip": {"mode": "single", "yHistogram": True},
    },
    "table": {"showHeader": True},
}
TRANSFORMATIONS: dict[str, list[dict[str, Any]]] = {
    "table": [
        {
            "id": "organize",
            "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
        }
    ],
}


def panel(spec: dict[str, Any], pid: int, x: int, y: int, width: int) -> dict[str, Any]:
    kind = spec.get("type", "timeseries")
    return {
        "id": pid,
        "type": kind,
        "title": spec["title"],
        "datasource": DS,
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": spec.get("unit", "short")}, "overrides": []},
        "options": OPTIONS.get(kind, {}),
        "transformations": TRANSFORMATIONS.get(kind, []),
        "targets": [
            {
                "refId": chr(65 + i),
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                "format": spec.get("format", "time_series"),
                "instant": kind == "table",
            }
            for i, (legend, expr) in enumerate(spec["targets"])
        ],
    }


def variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for title, specs in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y = pid + 1, y + 1
        width = 24 // len(specs)
        for k, spec in enumerate(specs):
            panels.append(panel(spec, pid, k * width, y, width))
            pid += 1
        y += 8
    return {
        "uid": "detect-serving",
        "title": "Detection serving",
        "tags": ["detect-serve"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                variable("instance", "label_values(detect_engine_info, instance)"),
                variable("model", 'label_values(detect_engine_info{instance=~"$instance"}, model)'),
                variable(
                    "precision",
                    'label_values(detect_engine_info{instance=~"$instance",model=~"$model"}, '
                    "precision)",
                ),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only compare; write nothing")
    args = parser.parse_args()
    text = json.dumps(dashboard(), indent=2) + "\n"
    if args.check:
        current = OUT.read_text() if OUT.is_file() else ""
        print(f"{OUT}: {'up to date' if current == text else 'out of date'}")
        return 0 if current == text else 1
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

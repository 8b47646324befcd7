"""Generate the Grafana dashboards in this directory with grafana-foundation-sdk.

    python dashboards/generate.py           # (re)write dashboards/*.json
    python dashboards/generate.py --check   # exit 1 if a committed file differs

The JSON files are build output: change this script, never the JSON (a test compares them).
Each dashboard comes twice, with the same panels: ``*-influxql.json`` for an InfluxDB data source
whose query language is InfluxQL (InfluxDB 1.x, or 2.x through its 1.x compatibility API with a
DBRP mapping) and ``*-flux.json`` for one whose language is Flux (InfluxDB 2.x); the data source
is picked with the ``datasource`` variable. Every panel states its query in both languages.
Series, tags and fields come from ``otel_luna.schema``, so a name is spelled once.

grafana-foundation-sdk has no InfluxDB query type; :class:`InfluxQuery` is one, built the way the
SDK's own query types are (a ``Dataquery`` variant with ``to_json``), emitting the JSON Grafana's
InfluxDB data source stores for a raw InfluxQL or a Flux query.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from grafana_foundation_sdk.builders import bargauge, dashboard, stat, table, text, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders.expr import TypeMath
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import text as text_model

from otel_luna.schema import luna, watchdog

HERE = Path(__file__).resolve().parent

#: The data source variable every panel and variable refers to.
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = model.DataSourceRef(type_val="influxdb", uid="${" + DATASOURCE_VARIABLE + "}")
#: Grafana's server-side expressions (math over the other queries of a panel).
EXPRESSION = model.DataSourceRef(type_val="__expr__", uid="__expr__")

#: Dashboard tags: find them all with one search in Grafana.
TAGS = ["otel-luna"]
#: Grafana's default panel width is 24 columns.
FULL, TWO_THIRDS, HALF, THIRD, QUARTER = 24, 16, 12, 8, 6


# -- the InfluxDB query type ---------------------------------------------------------------------


INFLUXQL, FLUX = "InfluxQL", "Flux"


class InfluxQuery(cogvariants.Dataquery):
    """A query of Grafana's InfluxDB data source (its ``InfluxQuery`` model), held in both
    languages; :attr:`language` (set when the dashboard is assembled) picks the one written."""

    def __init__(self, influxql: str, flux: str) -> None:
        self.influxql = influxql
        self.flux = flux
        self.language = INFLUXQL
        self.ref_id = ""
        self.alias: str | None = None
        self.result_format = "time_series"
        self.hide: bool | None = None

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {"datasource": DATASOURCE, "refId": self.ref_id}
        if self.language == FLUX:
            payload["query"] = self.flux
        else:  # a raw InfluxQL query; Flux has neither aliases nor result formats
            payload["query"] = self.influxql
            payload["rawQuery"] = True
            payload["resultFormat"] = self.result_format
            if self.alias is not None:
                payload["alias"] = self.alias
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload


class Influx(cogbuilder.Builder[InfluxQuery]):
    """Builder of :class:`InfluxQuery`, in the SDK's style: the InfluxQL statement (written on
    one line) and the Flux script of one query."""

    def __init__(self, influxql: str, flux: str) -> None:
        self._internal = InfluxQuery(" ".join(influxql.split()), flux)

    def build(self) -> InfluxQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def alias(self, alias: str) -> Self:
        """InfluxQL series name: ``$tag_<key>``, ``$col``, ``$measurement`` are Grafana's
        InfluxDB alias patterns (Flux names series by their group key and ``_field``)."""
        self._internal.alias = alias
        return self

    def table(self) -> Self:
        """InfluxQL rows as a table (one row per series and time) rather than time series."""
        self._internal.result_format = "table"
        return self

    def hide(self) -> Self:
        """Run the query but do not draw it (an input of an expression)."""
        self._internal.hide = True
        return self


# -- helpers -------------------------------------------------------------------------------------


def regex_filter(tag: str, variable: str) -> str:
    """``"tag" =~ /^$variable$/``: Grafana writes a multi-value or *All* selection as
    ``(a|b|c)`` with each value regex-escaped, a single value escaped."""
    return f'"{tag}" =~ /^${variable}$/'


def flux_regex_filter(tag: str, variable: str) -> str:
    """``r.tag =~ /^${variable:regex}$/``: Grafana's ``regex`` format, the same escaped
    alternation as InfluxQL gets."""
    return f"r.{tag} =~ /^${{{variable}:regex}}$/"


def pipe(*steps: str) -> str:
    """Flux steps joined with ``|>``, one per line."""
    return "\n  |> ".join(steps)


def source(measurement: str, fields: str, *filters: str) -> list[str]:
    """The first steps of a Flux query: the data source's default bucket over the dashboard's
    time range, one measurement, the fields ``fields`` (a predicate on ``r._field``) accepts,
    then each of ``filters``."""
    steps = [
        "from(bucket: v.defaultBucket)",
        "range(start: v.timeRangeStart, stop: v.timeRangeStop)",
        f'filter(fn: (r) => r._measurement == "{measurement}" and {fields})',
    ]
    return steps + [f"filter(fn: (r) => {condition})" for condition in filters]


def field_is(name: str) -> str:
    return f'r._field == "{name}"'


def field_in(names: Sequence[str], suffix: str = "") -> str:
    return "r._field =~ /^(" + "|".join(name + suffix for name in names) + ")$/"


def group(*tags: str) -> str:
    return "group(columns: [" + ", ".join(f'"{tag}"' for tag in tags) + "])"


def window(fn: str, *, empty: bool) -> str:
    """``aggregateWindow`` over Grafana's interval; ``empty``: zeros for empty windows."""
    return f"aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: {str(empty).lower()})"


def quantile_fn(percent: int) -> str:
    """A function for ``aggregateWindow``: the nearest-rank percentile (``exact_selector``)."""
    return (
        f"(column, tables=<-) => tables |> quantile(q: {percent / 100}, "
        'method: "exact_selector", column: column)'
    )


#: Counts per window as a rate per second (``v.windowPeriod`` in nanoseconds).
PER_SECOND = (
    "map(fn: (r) => ({r with _value: float(v: r._value) * 1000000000.0 "
    "/ float(v: int(v: v.windowPeriod))}))"
)


def named(query: str, name: str) -> str:
    """``query`` with its values named ``name`` (``_field``), yielded as ``name``."""
    return pipe(query, f'set(key: "_field", value: "{name}")', f'yield(name: "{name}")')


# A Flux query taking several statistics of one series defines ``data`` as a function
# (``data = () => from(...)``) that each branch calls: InfluxDB 2.7.12's Flux now and then
# panicked ("arrow/array: index out of range") on the watchdog timing panels, whose branches
# shared one stream (``data = from(...)``), under load; a stream of its own per branch shares
# no arrow buffers between branches.


def union_table(data: str, rows: Sequence[str], stats: Sequence[tuple[str, str]]) -> str:
    """Flux: ``data = () => <data>``, then one row per value of ``rows`` with a column per
    statistic (``name``, the steps that compute it from ``data()``), as floats. ``data`` is a
    function, each branch reading its own stream (the comment above)."""
    keep = "keep(columns: [" + ", ".join(f'"{row}"' for row in (*rows, "_value")) + "])"
    parts = "".join(
        f'    data() |> {steps} |> toFloat() |> {keep} |> set(key: "stat", value: "{name}"),\n'
        for name, steps in stats
    )
    keys = ", ".join(f'"{row}"' for row in rows)
    return (
        f"data = () => {data}\n\nunion(tables: [\n{parts}])\n  |> group()\n"
        f'  |> pivot(rowKey: [{keys}], columnKey: ["stat"], valueColumn: "_value")'
    )


def columns(function: str, names: Sequence[str], suffix: str = "", *, arg: str = "") -> str:
    """``function("name<suffix>"[, arg]) AS "name"`` for each name, comma-separated."""
    extra = f", {arg}" if arg else ""
    return ", ".join(f'{function}("{name}{suffix}"{extra}) AS "{name}"' for name in names)


def query_variable(
    language: str, name: str, label: str, influxql: str, flux: str
) -> dashboard.QueryVariable:
    """A multi-value variable with *All*, refreshed with the time range, sorted."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(flux if language == FLUX else " ".join(influxql.split()))
        .multi(True)
        .include_all(True)
        .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )


def datasource_variable(language: str) -> dashboard.DatasourceVariable:
    return (
        dashboard.DatasourceVariable(DATASOURCE_VARIABLE)
        .label(f"InfluxDB ({language})")
        .type("influxdb")
    )


def tag_values(tag: str, measurements: Sequence[str], *conditions: str) -> str:
    """Flux: the values of ``tag`` in ``measurements`` over the time range."""
    predicate = " or ".join(f'r._measurement == "{name}"' for name in measurements)
    if conditions:
        predicate = " and ".join((f"({predicate})", *conditions))
    return (
        'import "influxdata/influxdb/schema"\n\n'
        f'schema.tagValues(bucket: v.defaultBucket, tag: "{tag}", '
        f"predicate: (r) => {predicate}, start: v.timeRangeStart, stop: v.timeRangeStop)"
    )


def bars(panel: timeseries.Panel) -> timeseries.Panel:
    """Stacked bars: counts per interval."""
    return (
        panel.draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    )


def table_legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
    )


def over_range(calcs: str = "lastNotNull") -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().calcs([calcs]).values(False)


PanelBuilder = cogbuilder.Builder[model.Panel]


@dataclass
class Section:
    """A row of the dashboard and its panels."""

    title: str
    panels: list[PanelBuilder] = field(default_factory=list)


@dataclass(frozen=True)
class Board:
    """One dashboard: its file, identity, variables and rows."""

    file: str
    uid: str
    title: str
    description: str
    language: str
    variables: Callable[[str], list[cogbuilder.Builder[model.VariableModel]]]
    sections: Callable[[], list[Section]]


# -- LUNA PLATFORM --------------------------------------------------------------------------------

LUNA_SERVICE = regex_filter("service", "service")
LUNA_ROUTE = regex_filter("route", "route")
#: Where-clause of the request series (requests, errors) and of the service-only series.
REQUEST_WHERE = f"$timeFilter AND {LUNA_SERVICE} AND {LUNA_ROUTE}"
SERVICE_WHERE = f"$timeFilter AND {LUNA_SERVICE}"
F_SERVICE = flux_regex_filter("service", "service")
F_ROUTE = flux_regex_filter("route", "route")
PERCENTILES = (50, 95, 99)
STATUS_COLORS = {"ok": "green", "warning": "orange", "error": "red", "exception": "purple"}


def luna_variables(language: str) -> list[cogbuilder.Builder[model.VariableModel]]:
    return [
        datasource_variable(language),
        query_variable(
            language,
            "service",
            "service",
            f'SHOW TAG VALUES FROM "{luna.REQUESTS}", "{luna.USAGES_STATISTIC}", '
            f'"{luna.LICENSING}" WITH KEY = "service"',
            tag_values("service", (luna.REQUESTS, luna.USAGES_STATISTIC, luna.LICENSING)),
        ),
        query_variable(
            language,
            "route",
            "route",
            f'SHOW TAG VALUES FROM "{luna.REQUESTS}" WITH KEY = "route" WHERE {LUNA_SERVICE}',
            tag_values("route", (luna.REQUESTS,), F_SERVICE),
        ),
    ]


def luna_requests() -> Section:
    execution = ", ".join(f'percentile("execution_time", {p}) AS "p{p}"' for p in PERCENTILES)
    requests = source(luna.REQUESTS, field_is("execution_time"), F_SERVICE, F_ROUTE)
    percentiles = f"data = () => {pipe(*requests, group('route'))}\n\n" + "\n\n".join(
        named(pipe("data()", window(quantile_fn(p), empty=False)), f"p{p}") for p in PERCENTILES
    )
    route_stats = [("requests", "count()")]
    route_stats += [
        (f"p{p}", f'quantile(q: {p / 100}, method: "exact_selector")') for p in PERCENTILES
    ]
    route_stats += [("max", "max()")]
    return Section(
        "Requests",
        [
            timeseries.Panel()
            .title("Request rate per service and route")
            .description("requests points per second (one point per SERVER span)")
            .unit("reqps")
            .legend(table_legend())
            .with_target(
                Influx(
                    f'SELECT count("execution_time") * 1000 / $__interval_ms AS "rate" '
                    f'FROM "{luna.REQUESTS}" WHERE {REQUEST_WHERE} '
                    'GROUP BY time($__interval), "service", "route" fill(0)',
                    pipe(
                        *requests,
                        group("service", "route"),
                        window("count", empty=True),
                        PER_SECOND,
                    ),
                ).alias("$tag_service $tag_route")
            )
            .height(9)
            .span(HALF),
            bars(timeseries.Panel())
            .title("Requests by status code")
            .description("requests points per interval, by the status_code tag")
            .unit("short")
            .with_target(
                Influx(
                    f'SELECT count("execution_time") AS "requests" FROM "{luna.REQUESTS}" '
                    f'WHERE {REQUEST_WHERE} GROUP BY time($__interval), "status_code" fill(0)',
                    pipe(*requests, group("status_code"), window("count", empty=True)),
                ).alias("$tag_status_code")
            )
            .height(9)
            .span(HALF),
            timeseries.Panel()
            .title("execution_time p50 / p95 / p99 per route")
            .description("percentiles of execution_time per interval (nearest rank)")
            .unit("s")
            .legend(table_legend())
            .with_target(
                Influx(
                    f'SELECT {execution} FROM "{luna.REQUESTS}" WHERE {REQUEST_WHERE} '
                    'GROUP BY time($__interval), "route" fill(none)',
                    percentiles,
                ).alias("$tag_route $col")
            )
            .height(10)
            .span(FULL),
            table.Panel()
            .title("Routes over the time range")
            .description("requests, execution_time percentiles and maximum per service and route")
            .unit("s")
            .override_by_name("requests", [model.DynamicConfigValue(id_val="unit", value="short")])
            .with_target(
                Influx(
                    f'SELECT count("execution_time") AS "requests", {execution}, '
                    f'max("execution_time") AS "max" FROM "{luna.REQUESTS}" '
                    f'WHERE {REQUEST_WHERE} GROUP BY "service", "route"',
                    union_table(
                        pipe(*requests, group("service", "route")),
                        ("service", "route"),
                        route_stats,
                    ),
                ).table()
            )
            .height(8)
            .span(FULL),
        ],
    )


def luna_errors() -> Section:
    errors = source(luna.ERRORS, field_is("request_id"), F_SERVICE, F_ROUTE)
    requests = source(luna.REQUESTS, field_is("execution_time"), F_SERVICE, F_ROUTE)
    return Section(
        "Errors",
        [
            timeseries.Panel()
            .title("Error rate per route")
            .description(
                "errors points per second: failed requests (HTTP >= 400, an "
                "exception, or a LUNA error code)"
            )
            .unit("reqps")
            .legend(table_legend())
            .with_target(
                Influx(
                    f'SELECT count("request_id") * 1000 / $__interval_ms AS "rate" '
                    f'FROM "{luna.ERRORS}" WHERE {REQUEST_WHERE} '
                    'GROUP BY time($__interval), "route" fill(0)',
                    pipe(*errors, group("route"), window("count", empty=True), PER_SECOND),
                ).alias("$tag_route")
            )
            .height(9)
            .span(HALF),
            stat.Panel()
            .title("Error ratio")
            .description("errors points / requests points over the time range")
            .unit("percentunit")
            .decimals(2)
            .with_target(
                Influx(
                    f'SELECT count("request_id") AS "errors" FROM "{luna.ERRORS}" '
                    f"WHERE {REQUEST_WHERE}",
                    pipe(*errors, "group()", "count()"),
                )
                .ref_id("A")
                .hide()
            )
            .with_target(
                Influx(
                    f'SELECT count("execution_time") AS "requests" FROM "{luna.REQUESTS}" '
                    f"WHERE {REQUEST_WHERE}",
                    pipe(*requests, "group()", "count()"),
                )
                .ref_id("B")
                .hide()
            )
            .with_target(TypeMath().ref_id("C").datasource(EXPRESSION).expression("$A / $B"))
            .reduce_options(over_range())
            .height(9)
            .span(QUARTER),
            table.Panel()
            .title("Top error codes")
            .description(
                "the 10 most frequent error_code tags over the time range "
                "(0: a failed request with no LUNA code)"
            )
            .with_target(
                Influx(
                    'SELECT top("errors", "error_code", 10) AS "errors" FROM '
                    f'(SELECT count("request_id") AS "errors" FROM "{luna.ERRORS}" '
                    f'WHERE {REQUEST_WHERE} GROUP BY "error_code")',
                    pipe(
                        *errors,
                        group("error_code"),
                        "count()",
                        "group()",
                        "top(n: 10)",
                        'keep(columns: ["error_code", "_value"])',
                        'rename(columns: {_value: "errors"})',
                    ),
                ).table()
            )
            .height(9)
            .span(QUARTER),
            bars(timeseries.Panel())
            .title("Errors by error_code")
            .unit("short")
            .with_target(
                Influx(
                    f'SELECT count("request_id") AS "errors" FROM "{luna.ERRORS}" '
                    f'WHERE {REQUEST_WHERE} GROUP BY time($__interval), "error_code" fill(0)',
                    pipe(*errors, group("error_code"), window("count", empty=True)),
                ).alias("$tag_error_code")
            )
            .height(8)
            .span(HALF),
            table.Panel()
            .title("Errors by route, status code and error_code")
            .with_target(
                Influx(
                    f'SELECT count("request_id") AS "errors" FROM "{luna.ERRORS}" '
                    f'WHERE {REQUEST_WHERE} GROUP BY "route", "status_code", "error_code"',
                    pipe(
                        *errors,
                        group("route", "status_code", "error_code"),
                        "count()",
                        "group()",
                        'rename(columns: {_value: "errors"})',
                    ),
                ).table()
            )
            .height(8)
            .span(HALF),
        ],
    )


def luna_stages() -> Section:
    stages = luna.STAGE_TIME_FIELDS
    timed = source(luna.REQUESTS, field_in(stages), F_SERVICE, F_ROUTE)
    return Section(
        "Stages (*_time fields of requests)",
        [
            timeseries.Panel()
            .title("Stage times, mean per interval")
            .description("the documented stage timings a handler records with monitor_time()")
            .unit("s")
            .legend(table_legend())
            .with_target(
                Influx(
                    f'SELECT {columns("mean", stages)} FROM "{luna.REQUESTS}" '
                    f"WHERE {REQUEST_WHERE} GROUP BY time($__interval) fill(none)",
                    pipe(*timed, group("_field"), window("mean", empty=False)),
                ).alias("$col")
            )
            .height(10)
            .span(FULL),
            table.Panel()
            .title("Stage times p95 per route over the time range")
            .unit("s")
            .with_target(
                Influx(
                    f'SELECT {columns("percentile", stages, arg="95")} FROM "{luna.REQUESTS}" '
                    f'WHERE {REQUEST_WHERE} GROUP BY "route"',
                    pipe(
                        *timed,
                        group("route", "_field"),
                        'quantile(q: 0.95, method: "exact_selector")',
                        'keep(columns: ["route", "_field", "_value"])',
                        "group()",
                        'pivot(rowKey: ["route"], columnKey: ["_field"], valueColumn: "_value")',
                    ),
                ).table()
            )
            .height(8)
            .span(FULL),
        ],
    )


def luna_usages() -> Section:
    estimators = luna.ESTIMATORS
    suffix = luna.USAGES_SUFFIX
    used = source(luna.USAGES_STATISTIC, field_in(estimators, suffix), F_SERVICE)
    # every estimator's sum, per interval and service: fill(0) makes an estimator unused in an
    # interval 0 before the addition (a null would make the whole sum null)
    estimations = " + ".join(f'sum("{name}{suffix}")' for name in estimators)
    requests = source(luna.REQUESTS, field_is("execution_time"), F_SERVICE)
    return Section(
        "Usages (usages_statistic)",
        [
            bars(timeseries.Panel())
            .title("Estimations per interval, per estimator")
            .description(
                "the <estimator>_usages fields summed per interval: one usages_statistic point "
                "per request that ran an estimation (OTEL_EXPORTER_LUNA_USAGES=request), or one "
                "per service and export interval (interval)"
            )
            .unit("short")
            .legend(table_legend())
            .with_target(
                Influx(
                    f"SELECT {columns('sum', estimators, suffix)} "
                    f'FROM "{luna.USAGES_STATISTIC}" WHERE {SERVICE_WHERE} '
                    "GROUP BY time($__interval) fill(none)",
                    pipe(*used, group("_field"), window("sum", empty=False)),
                ).alias("$col")
            )
            .height(10)
            .span(TWO_THIRDS),
            bargauge.Panel()
            .title("Estimations over the time range")
            .unit("short")
            .orientation(common.VizOrientation.HORIZONTAL)
            .reduce_options(over_range("sum"))
            .with_target(
                Influx(
                    f"SELECT {columns('sum', estimators, suffix)} "
                    f'FROM "{luna.USAGES_STATISTIC}" WHERE {SERVICE_WHERE}',
                    pipe(*used, group("_field"), "sum()"),
                ).alias("$col")
            )
            .height(10)
            .span(THIRD),
            timeseries.Panel()
            .title("Estimations per request, per service")
            .description(
                "every estimator's estimations per interval over the service's requests points "
                "in that interval (all routes: usages_statistic has no route tag); none where "
                "the service answered no request"
            )
            .unit("short")
            .decimals(2)
            .legend(table_legend())
            .with_target(
                Influx(
                    f'SELECT {estimations} AS "estimations" FROM "{luna.USAGES_STATISTIC}" '
                    f'WHERE {SERVICE_WHERE} GROUP BY time($__interval), "service" fill(0)',
                    pipe(
                        *used,
                        group("service"),
                        window("sum", empty=True),
                        "fill(value: 0)",
                        'set(key: "_field", value: "estimations")',
                    ),
                )
                .alias("$tag_service")
                .ref_id("A")
                .hide()
            )
            .with_target(
                Influx(
                    f'SELECT count("execution_time") AS "requests" FROM "{luna.REQUESTS}" '
                    f'WHERE {SERVICE_WHERE} GROUP BY time($__interval), "service" fill(none)',
                    pipe(
                        *requests,
                        group("service"),
                        window("count", empty=False),
                        'set(key: "_field", value: "requests")',
                    ),
                )
                .alias("$tag_service")
                .ref_id("B")
                .hide()
            )
            .with_target(TypeMath().ref_id("C").datasource(EXPRESSION).expression("$A / $B"))
            .height(9)
            .span(FULL),
        ],
    )


def status_colors(panel: timeseries.Panel) -> timeseries.Panel:
    """Each license_status series in its status colour."""
    for status, color in STATUS_COLORS.items():
        panel = panel.override_by_name(
            status,
            [
                model.DynamicConfigValue(
                    id_val="color", value={"mode": "fixed", "fixedColor": color}
                )
            ],
        )
    return panel


def luna_licensing() -> Section:
    mappings: list[model.ValueMapping] = [
        model.ValueMap(
            options={
                status: model.ValueMappingResult(color=color, index=index)
                for index, (status, color) in enumerate(STATUS_COLORS.items())
            }
        )
    ]
    checks = source(luna.LICENSING, field_is("warnings"), F_SERVICE)
    balance = source(luna.LICENSING, field_is("liveness_balance"), F_SERVICE)
    messages = source(
        luna.LICENSING, field_in(("liveness_balance", "warnings", "errors")), F_SERVICE
    )
    return Section(
        "Licensing",
        [
            stat.Panel()
            .title("Latest licence status per service")
            .description("license_status of the last licence check (ok, warning, error, exception)")
            .mappings(mappings)
            .color_mode(common.BigValueColorMode.BACKGROUND)
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .display_name("${__data.fields.service}")
            .reduce_options(
                common_builders.ReduceDataOptions()
                .values(True)  # one value per service (row), not one for all
                .calcs(["lastNotNull"])
                .fields("/^license_status$/")
            )
            .with_target(
                Influx(
                    'SELECT last("liveness_balance") AS "liveness_balance", "license_status" '
                    f'FROM "{luna.LICENSING}" WHERE {SERVICE_WHERE} GROUP BY "service"',
                    pipe(
                        *checks,
                        group("service"),
                        "last()",
                        'keep(columns: ["service", "license_status"])',
                    ),
                ).table()
            )
            .height(8)
            .span(QUARTER),
            timeseries.Panel()
            .title("Liveness balance")
            .description("liveness estimations left before the licence expires (last per interval)")
            .unit("short")
            .with_target(
                Influx(
                    f'SELECT last("liveness_balance") AS "liveness_balance" '
                    f'FROM "{luna.LICENSING}" WHERE {SERVICE_WHERE} '
                    'GROUP BY time($__interval), "service" fill(none)',
                    pipe(*balance, group("service"), window("last", empty=False)),
                ).alias("$tag_service")
            )
            .height(8)
            .span(HALF),
            status_colors(bars(timeseries.Panel()))
            .title("Licence checks by status")
            .unit("short")
            .with_target(
                Influx(
                    f'SELECT count("warnings") AS "checks" FROM "{luna.LICENSING}" '
                    f'WHERE {SERVICE_WHERE} GROUP BY time($__interval), "license_status" '
                    "fill(0)",
                    pipe(*checks, group("license_status"), window("count", empty=True)),
                ).alias("$tag_license_status")
            )
            .height(8)
            .span(QUARTER),
            table.Panel()
            .title("Latest licence warnings and errors")
            .with_target(
                Influx(
                    'SELECT "service", "license_status", "liveness_balance", "warnings", '
                    f'"errors" FROM "{luna.LICENSING}" WHERE {SERVICE_WHERE} '
                    "AND (\"warnings\" != '' OR \"errors\" != '') ORDER BY time DESC LIMIT 50",
                    pipe(
                        *messages,
                        'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
                        'filter(fn: (r) => r.warnings != "" or r.errors != "")',
                        "group()",
                        'sort(columns: ["_time"], desc: true)',
                        "limit(n: 50)",
                        'keep(columns: ["_time", "service", "license_status", "liveness_balance", '
                        '"warnings", "errors"])',
                    ),
                ).table()
            )
            .height(8)
            .span(FULL),
        ],
    )


def luna_board(language: str) -> Board:
    return Board(
        file=f"luna-{language.lower()}.json",
        uid=f"otel-luna-luna-{language.lower()}",
        title=f"LUNA PLATFORM monitoring ({language})",
        description="requests, errors, usages_statistic and licensing as otel-luna writes them",
        language=language,
        variables=luna_variables,
        sections=luna_sections,
    )


def luna_sections() -> list[Section]:
    return [luna_requests(), luna_errors(), luna_stages(), luna_usages(), luna_licensing()]


# -- watchdog-proxy -------------------------------------------------------------------------------

CONSUMER = regex_filter("consumer_name", "consumer")
CONSUMER_WHERE = f"$timeFilter AND {CONSUMER}"
F_CONSUMER = flux_regex_filter("consumer_name", "consumer")
TIMING_TITLES = {
    "timing_sent": "Time in queue (timing_sent)",
    "timing_received": "Waiting for PhotoDNA (timing_received)",
    "timing_submitted": "Reply to consumer (timing_submitted)",
}


def watchdog_variables(language: str) -> list[cogbuilder.Builder[model.VariableModel]]:
    return [
        datasource_variable(language),
        query_variable(
            language,
            "consumer",
            "consumer_name",
            f'SHOW TAG VALUES FROM "{watchdog.NEW_ITEM}", "{watchdog.WORKER_WORKS}" '
            'WITH KEY = "consumer_name"',
            tag_values("consumer_name", (watchdog.NEW_ITEM, watchdog.WORKER_WORKS)),
        ),
    ]


def works(fields: str, *filters: str) -> list[str]:
    """Flux: the selected consumers' ``worker_works`` fields that ``fields`` accepts."""
    return source(watchdog.WORKER_WORKS, fields, F_CONSUMER, *filters)


def new_items() -> list[str]:
    return source(watchdog.NEW_ITEM, field_is("watchdog_id"), F_CONSUMER)


def watchdog_overview() -> Section:
    works_from = f'FROM "{watchdog.WORKER_WORKS}" WHERE {CONSUMER_WHERE}'

    def total(title: str, query: str, flux: str, description: str = "") -> stat.Panel:
        return (
            stat.Panel()
            .title(title)
            .description(description)
            .unit("short")
            .graph_mode(common.BigValueGraphMode.NONE)
            .reduce_options(over_range())
            .with_target(Influx(query, flux))
            .height(5)
            .span(QUARTER)
        )

    return Section(
        "Overview (selected consumers, time range)",
        [
            total(
                "New items submitted",
                f'SELECT count("watchdog_id") AS "submitted" FROM "{watchdog.NEW_ITEM}" '
                f"WHERE {CONSUMER_WHERE}",
                pipe(*new_items(), "group()", "count()"),
                "new_item pings",
            ),
            total(
                "Images processed",
                f'SELECT count("worker_id") AS "processed" {works_from}',
                pipe(*works(field_is("worker_id")), "group()", "count()"),
                "worker_works pings, failed ones included",
            ),
            total(
                "Errors (is_error)",
                f'SELECT count("worker_id") AS "errors" {works_from} AND "is_error" = \'true\'',
                pipe(*works(field_is("worker_id"), 'r.is_error == "true"'), "group()", "count()"),
            ),
            stat.Panel()
            .title("Positive / negative responses")
            .description("is_match = true / false; (none): the worker failed before an answer")
            .unit("short")
            .graph_mode(common.BigValueGraphMode.NONE)
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .reduce_options(over_range())
            .with_target(
                Influx(
                    f'SELECT count("worker_id") AS "items" {works_from} GROUP BY "is_match"',
                    pipe(*works(field_is("worker_id")), group("is_match"), "count()"),
                ).alias("is_match=$tag_is_match")
            )
            .height(5)
            .span(QUARTER),
        ],
    )


def watchdog_timings() -> Section:
    works_from = f'FROM "{watchdog.WORKER_WORKS}" WHERE {CONSUMER_WHERE}'

    def distribution(name: str) -> str:
        return (
            f'percentile("{name}", 50) AS "p50", percentile("{name}", 95) AS "p95", '
            f'max("{name}") AS "max"'
        )

    def flux_distribution(data: str) -> str:
        """p50, p95 and max per window of ``data`` (one table of ``_value``)."""
        steps = [("p50", quantile_fn(50)), ("p95", quantile_fn(95)), ("max", "max")]
        return f"data = () => {data}\n\n" + "\n\n".join(
            named(pipe("data()", window(fn, empty=False)), name) for name, fn in steps
        )

    panels: list[PanelBuilder] = [
        timeseries.Panel()
        .title(title)
        .unit("ms")
        .with_target(
            Influx(
                f"SELECT {distribution(name)} {works_from} GROUP BY time($__interval) fill(none)",
                flux_distribution(pipe(*works(field_is(name)), "group()")),
            ).alias("$col")
        )
        .height(8)
        .span(HALF)
        for name, title in TIMING_TITLES.items()
    ]
    total = " + ".join(f'"{name}"' for name in TIMING_TITLES)
    present = " and ".join(f"exists r.{name}" for name in TIMING_TITLES)
    summed = pipe(
        *works(field_in(tuple(TIMING_TITLES))),
        'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
        f"filter(fn: (r) => {present})",
        "map(fn: (r) => ({r with _value: " + " + ".join(f"r.{n}" for n in TIMING_TITLES) + "}))",
        "group()",
    )
    panels.append(
        timeseries.Panel()
        .title("Sum of the three: the health measure")
        .description(
            "timing_sent + timing_received + timing_submitted of each worker that "
            "has all three (a failed worker has no sum)"
        )
        .unit("ms")
        .with_target(
            Influx(
                f'SELECT {distribution("total")} FROM (SELECT {total} AS "total" {works_from}) '
                "WHERE $timeFilter GROUP BY time($__interval) fill(none)",
                flux_distribution(summed),
            ).alias("$col")
        )
        .height(8)
        .span(HALF)
    )
    per_consumer = ", ".join(f'percentile("{name}", 95) AS "{name} p95"' for name in TIMING_TITLES)
    by_consumer = group("consumer_name")
    panels.append(
        table.Panel()
        .title("Per consumer over the time range")
        .description("worker_works pings and the p95 of each timing (ms)")
        .with_target(
            Influx(
                f'SELECT count("worker_id") AS "processed", {per_consumer} {works_from} '
                'GROUP BY "consumer_name"',
                # Each field is grouped apart: worker_id is a string, the timings integers,
                # and InfluxDB 2.x refuses a table of both ("schema collision").
                union_table(
                    pipe(*works(field_in(("worker_id", *TIMING_TITLES)))),
                    ("consumer_name",),
                    [
                        (
                            "processed",
                            f'filter(fn: (r) => r._field == "worker_id") |> {by_consumer} '
                            "|> count()",
                        )
                    ]
                    + [
                        (
                            f"{name} p95",
                            f'filter(fn: (r) => r._field == "{name}") |> {by_consumer} '
                            '|> quantile(q: 0.95, method: "exact_selector")',
                        )
                        for name in TIMING_TITLES
                    ],
                ),
            ).table()
        )
        .height(7)
        .span(FULL)
    )
    return Section("Throughput timings (ms)", panels)


def watchdog_identifications() -> Section:
    works_from = f'FROM "{watchdog.WORKER_WORKS}" WHERE {CONSUMER_WHERE}'
    return Section(
        "Identifications and queue",
        [
            bars(timeseries.Panel())
            .title("Positive vs negative responses")
            .unit("short")
            .with_target(
                Influx(
                    f'SELECT count("worker_id") AS "items" {works_from} '
                    'GROUP BY time($__interval), "is_match" fill(0)',
                    pipe(
                        *works(field_is("worker_id")),
                        group("is_match"),
                        window("count", empty=True),
                    ),
                ).alias("is_match=$tag_is_match")
            )
            .height(8)
            .span(HALF),
            table.Panel()
            .title("Per consumer: matches and errors")
            .with_target(
                Influx(
                    f'SELECT count("worker_id") AS "items" {works_from} '
                    'GROUP BY "consumer_name", "is_match", "is_error"',
                    pipe(
                        *works(field_is("worker_id")),
                        group("consumer_name", "is_match", "is_error"),
                        "count()",
                        "group()",
                        'rename(columns: {_value: "items"})',
                    ),
                ).table()
            )
            .height(8)
            .span(HALF),
            timeseries.Panel()
            .title("Items in the message queue")
            .description("poller_heartbeat, max per interval; heartbeats carry no consumer")
            .unit("short")
            .with_target(
                Influx(
                    'SELECT max("items_in_queue") AS "in queue", '
                    'max("items_in_progress") AS "in progress", '
                    f'max("items_in_waiting") AS "waiting" FROM "{watchdog.POLLER_HEARTBEAT}" '
                    "WHERE $timeFilter GROUP BY time($__interval) fill(none)",
                    pipe(
                        *source(watchdog.POLLER_HEARTBEAT, "r._field =~ /^items_in_/"),
                        group("_field"),
                        window("max", empty=False),
                    ),
                ).alias("$col")
            )
            .height(8)
            .span(HALF),
            bars(timeseries.Panel())
            .title("Submitted and processed per interval")
            .unit("short")
            .stacking(common_builders.StackingConfig().mode(common.StackingMode.NONE))
            .with_target(
                Influx(
                    f'SELECT count("watchdog_id") AS "submitted" FROM "{watchdog.NEW_ITEM}" '
                    f"WHERE {CONSUMER_WHERE} GROUP BY time($__interval) fill(0)",
                    named(pipe(*new_items(), "group()", window("count", empty=True)), "submitted"),
                )
                .ref_id("A")
                .alias("$col")
            )
            .with_target(
                Influx(
                    f'SELECT count("worker_id") AS "processed" {works_from} '
                    "GROUP BY time($__interval) fill(0)",
                    named(
                        pipe(*works(field_is("worker_id")), "group()", window("count", empty=True)),
                        "processed",
                    ),
                )
                .ref_id("B")
                .alias("$col")
            )
            .height(8)
            .span(HALF),
            text.Panel()
            .title("Not answerable from these events")
            .mode(text_model.TextMode.MARKDOWN)
            .content(
                "Images **not yet reviewed / under review** and **confirmed vs falsely "
                "identified** need the manual review's state, which none of the three "
                "pings carries (see docs/watchdog.md)."
            )
            .height(4)
            .span(FULL),
        ],
    )


def watchdog_board(language: str) -> Board:
    return Board(
        file=f"watchdog-{language.lower()}.json",
        uid=f"otel-luna-watchdog-{language.lower()}",
        title=f"watchdog-proxy metrics ({language})",
        description="the watchdog-proxy metrics document's questions, from new_item, "
        "poller_heartbeat and worker_works",
        language=language,
        variables=watchdog_variables,
        sections=watchdog_sections,
    )


def watchdog_sections() -> list[Section]:
    return [watchdog_overview(), watchdog_timings(), watchdog_identifications()]


BOARDS = tuple(
    board(language) for board in (luna_board, watchdog_board) for language in (INFLUXQL, FLUX)
)


# -- assembling -----------------------------------------------------------------------------------


def build(board: Board) -> dict[str, object]:
    """The dashboard's JSON model (a dict ready for ``json.dumps``)."""
    builder = (
        dashboard.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(TAGS)
        .editable()
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .annotation(
            # Grafana's own annotations, as every dashboard it saves has them
            dashboard.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
    )
    for variable in board.variables(board.language):
        builder = builder.with_variable(variable)
    panel_id = 0
    for section in board.sections():
        panel_id += 1
        builder = builder.with_row(dashboard.Row(section.title).id(panel_id))
        for panel in section.panels:
            panel_id += 1
            ref = ord("A")
            built = panel.build()
            for target in built.targets or []:
                if isinstance(target, InfluxQuery):
                    target.language = board.language
                    target.ref_id = target.ref_id or chr(ref)
                ref += 1
            builder = builder.with_panel(_Built(built, panel_id))
    document: dict[str, object] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return document


class _Built(cogbuilder.Builder[model.Panel]):
    """A built panel with its id and the data source set (for ``Dashboard.with_panel``)."""

    def __init__(self, panel: model.Panel, panel_id: int) -> None:
        panel.id_val = panel_id
        if panel.type_val != "text":
            panel.datasource = DATASOURCE
        self._panel = panel

    def build(self) -> model.Panel:
        return self._panel


def render(board: Board) -> str:
    """The file's text: sorted keys, two-space indent, a final newline."""
    return json.dumps(build(board), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--out", type=Path, default=HERE, help="directory (default: here)")
    args = parser.parse_args(argv)
    stale = []
    for board in BOARDS:
        path = args.out / board.file
        content = render(board)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != content:
                stale.append(path)
        else:
            path.write_text(content, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(
            f"{path} differs from what the generator produces: run {Path(__file__).name}",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

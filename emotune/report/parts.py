"""What a report section is made of: the page is a list of Sections, each built from the ReportContext by
one function of emotune.report.build.SECTIONS (the demo's in emotune.report.demo)."""

from __future__ import annotations

from dataclasses import dataclass, field

from emotune.report.data import RunData


@dataclass
class ReportOptions:
    title: str = "emotune report"
    intro: str = ""  # a paragraph under the title: what the runs demonstrate
    headline: list[str] = field(default_factory=list)  # "task/metric" (or "metric": every task that has it), in order


@dataclass
class Plot:
    name: str  # file name without .png; the <img> id
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    html: str = ""  # the section's body (tables, paragraphs), shown above its plots
    markdown: str = ""  # its part of results.md ("" = none)
    plots: list[Plot] = field(default_factory=list)


@dataclass
class ReportContext:
    runs: list[RunData]
    options: ReportOptions
    tasks: list[str]  # tasks scored by an accuracy, in the paper's order
    headline: list[tuple[str, str]]  # (task, metric) the report leads with
    panels: list[tuple[str, str]]  # every directed (task, metric): the headline first
    store: str | None = None  # the result store, when not each run's own

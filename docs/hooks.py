"""MkDocs hook: the benchmark plots live in benchmarks/results/ (where the benchmarks write them); the site serves
them as results/<name>.png, so the docs never hold a second, drifting copy."""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def on_files(files, config):
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{plot.name}", abs_src_path=str(plot)))
    return files

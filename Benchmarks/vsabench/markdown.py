"""BENCHMARKS.md as sections: the markers around the scale, directors and pool sections, reading the sections a run
keeps, and writing the file back (main, scale, directors, pool). A run that measures one section rewrites only it.
The markers are matched in the BENCHMARKS.md already written: they stay byte for byte what bench.py wrote."""

from .common import MD_PATH

SCALE_BEGIN = "<!-- BEGIN scale (bench.py --scale rewrites this section) -->"
SCALE_END = "<!-- END scale -->"
DIRECTORS_BEGIN = "<!-- BEGIN directors (bench.py --directors rewrites this section) -->"
DIRECTORS_END = "<!-- END directors -->"
POOL_BEGIN = "<!-- BEGIN pool (bench.py --pool rewrites this section) -->"
POOL_END = "<!-- END pool -->"


def existing_section(begin_marker, end_marker):
    try:
        with open(MD_PATH) as f:
            text = f.read()
    except OSError:
        return None
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 or end < 0:
        return None
    return text[begin:end + len(end_marker)]


def existing_scale_section():
    return existing_section(SCALE_BEGIN, SCALE_END)


def existing_main_section():
    try:
        with open(MD_PATH) as f:
            text = f.read()
    except OSError:
        return None
    for begin_marker, end_marker in ((SCALE_BEGIN, SCALE_END), (DIRECTORS_BEGIN, DIRECTORS_END),
                                     (POOL_BEGIN, POOL_END)):
        begin = text.find(begin_marker)
        if begin >= 0:
            end = text.find(end_marker)
            text = text[:begin] + (text[end + len(end_marker):] if end >= 0 else "")
    return text.strip() or None


def write_markdown(main_text, scale_text, directors_text=None, pool_text=None):
    directors_text = directors_text or existing_section(DIRECTORS_BEGIN, DIRECTORS_END)
    pool_text = pool_text or existing_section(POOL_BEGIN, POOL_END)
    parts = [p.strip() for p in (main_text, scale_text, directors_text, pool_text) if p]
    if not parts:
        return
    with open(MD_PATH, "w") as f:
        f.write("\n\n".join(parts) + "\n")

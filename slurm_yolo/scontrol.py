"""Reading ``scontrol show job``: the one parser of its output, for the epilog's end-state
rules and the job's own question on SIGTERM (is Slurm ending me?), so both read a job's
state the same way.
"""

from __future__ import annotations

import re

# A Slurm job ID as squeue and scontrol show it: 123, or an array element 123_4.
JOB_ID_RE = re.compile(r"\d+(_\d+)?")


def parse_scontrol(text: str, job_id: str | None = None) -> dict[str, str]:
    """``scontrol show job`` output → ``{"JobState": "COMPLETING", "Reason": "None", ...}``.

    For an array element scontrol may print several records (the array's and the
    element's); with ``job_id`` the record whose ``JobId`` matches is returned. Values never
    contain spaces except in line-long keys (Command=, WorkDir=, Comment=, ...) kept whole.
    """
    records: list[dict[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("JobId="):
            records.append({})
        if not records:
            continue
        fields = records[-1]
        m = re.match(r"(Command|WorkDir|StdErr|StdIn|StdOut|Comment|AdminComment)=(.*)$", line)
        if m:
            fields[m.group(1)] = m.group(2).rstrip()
            continue
        for token in line.split(" "):
            key, sep, value = token.partition("=")
            if sep and key and key not in fields:
                fields[key] = value
    array_job, _, task = str(job_id or "").partition("_")
    for fields in records:
        if job_id is None or fields.get("JobId") == str(job_id) \
                or (task and fields.get("ArrayJobId") == array_job and fields.get("ArrayTaskId") == task):
            return fields
    return {}

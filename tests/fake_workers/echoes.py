"""Reports back the file list it was given, whole: a hand-off as large as a 10,000-file group's."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    files = pipes.extras["files"]
    pipes.report_custom_message({"worker": "echoes", "files": files, "count": len(files)})

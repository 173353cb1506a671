"""The benchmarks' gunicorn configuration: deliberately empty.

gunicorn reads ``./gunicorn.conf.py`` when no ``-c`` is given, and the repository's is
the example app's (access log, hooks, four workers). The benchmarks pass ``-c`` with
this file so that every setting they measure under is on their command line.
"""

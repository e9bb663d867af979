from mcomp.cli.main import run

run()

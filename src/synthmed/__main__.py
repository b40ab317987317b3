from synthmed.cli import app

app(prog_name="synthmed")

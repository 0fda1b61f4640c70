from rescompile.cli import main

main()

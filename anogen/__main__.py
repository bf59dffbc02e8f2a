from anogen.cli.app import main

main()

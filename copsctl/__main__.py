from copsctl.cli import main

main()

from spreadpref.cli import main

main()

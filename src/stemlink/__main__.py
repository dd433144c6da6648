from stemlink.cli import main

main()

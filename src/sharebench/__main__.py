from sharebench.cli import main

main()

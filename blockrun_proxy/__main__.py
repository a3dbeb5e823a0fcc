from blockrun_proxy.cli import main

main()

from vpnoffload.cli import main

main()

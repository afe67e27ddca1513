from vpnoffload.entry import main

main()

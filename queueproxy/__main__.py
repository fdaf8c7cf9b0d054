from queueproxy.main import main

main()

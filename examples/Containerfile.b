# Image B of the seed story:  OS → web server installed → server config → index.html "B"
# The base is busybox imported from the host's busybox-static (see examples/demo.sh).
FROM busybox

# "install the web server": busybox httpd, and a document root for it
RUN ln -s busybox /bin/httpd && mkdir -p /var/www/html

# the server's configuration
COPY seed/httpd.conf /etc/httpd.conf

# the page: the only step where A and B differ
COPY seed/index-b.html /var/www/html/index.html

EXPOSE 8080
CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/var/www/html", "-c", "/etc/httpd.conf"]

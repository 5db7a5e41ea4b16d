# A teacher's first exercise, with a real Tryton client (proteus), shared by the native image-tool
# suites (test/unit/image-tools/pgitest.py) and the qemu end-to-end tests (test/helpers/proteus.ts):
# a party d['party'], a product (d['product'], default "Article <party>") whose category carries
# the French chart's accounts (7071 revenue, 6071 expense) and VAT 20 % (account_fr's "T.V.A. Vente
# de biens Taux Normal"), a customer invoice of 3 x 100 EUR dated d['date'] (default today), posted.
# The caller has connected proteus (config, Model) and set `d`; prints the invoice as one JSON line.
Party = Model.get('party.party'); Template = Model.get('product.template'); Category = Model.get('product.category')
Account = Model.get('account.account'); Tax = Model.get('account.tax'); Invoice = Model.get('account.invoice'); Uom = Model.get('product.uom')
party_name = d.get('party', 'Client E2E')
customer = Party(name=party_name); customer.save()
cat = Category(name='Marchandises %s' % party_name, accounting=True)
cat.account_revenue, = Account.find([('code', '=', '7071')])
cat.account_expense, = Account.find([('code', '=', '6071')])
tva, = Tax.find([('name', '=', 'T.V.A. Vente de biens Taux Normal'), ('parent', '=', None)])
cat.customer_taxes.append(Tax(tva.id))
cat.save()
unit, = Uom.find([('symbol', '=', 'u')])
t = Template(name=d.get('product', 'Article %s' % party_name), default_uom=unit, type='goods', list_price=Decimal('100'), account_category=cat)
t.save()
day = datetime.date.fromisoformat(d['date']) if d.get('date') else datetime.date.today()
inv = Invoice(type='out', party=customer, invoice_date=day)
line = inv.lines.new(); line.product = t.products[0]; line.quantity = 3; line.unit_price = Decimal('100')
inv.save()
inv.click('post')
inv = Invoice(inv.id)
print(json.dumps({'number': inv.number, 'state': inv.state, 'total': str(inv.total_amount), 'untaxed': str(inv.untaxed_amount),
                  'company': inv.company.party.name, 'fiscalYear': inv.move.period.fiscalyear.name,
                  'move': inv.move.post_number if inv.move else None, 'id': inv.id}))
